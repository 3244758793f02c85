# The two commands a fresh clone needs: `make serve` and `make test`. Both set up .venv first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXTRA   ?= cpu

.PHONY: setup serve test demo demo-screenshot browser bench bench-select lint clean

setup: $(STAMP)

# Re-install only when pyproject.toml changed (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRA)]"
	# PyPI's torchaudio and torchcodec are CUDA builds that cannot load beside CPU torch and break
	# `import transformers` / `import vllm`; nothing here decodes audio or video, so drop them.
	if [ "$(EXTRA)" = cpu ]; then $(PY) -m pip uninstall --quiet -y torchaudio torchcodec; fi
	# vLLM's processes import torchvision before any plugin runs: arm the torchvision fix at interpreter start.
	$(PY) -c "from tokencomp._compat import write_pth; print('installed', write_pth())"
	touch $(STAMP)

serve: setup
	$(PY) -m tokencomp.cli serve $(ARGS)

test: setup browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m tokencomp.cli demo $(ARGS)

# A PNG of the demo page after a real question (embedded in the README).
demo-screenshot: setup browser
	$(PY) -m tokencomp.demo.browser --model models/tokencomp-tiny-llava --out demo/screenshot.png

# The browser tests drive Debian's chromium (Playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The serving reports: TokenComp vs vanilla vLLM on the shipped model (bench/shipped/) and on the scaled 0.3 B
# model (bench/scaled/: fewer requests and budgets, its decode is slow on 2 cores), then the soak (bench/soak.md).
bench: setup
	$(PY) -m tokencomp.cli bench serve --out bench/shipped
	$(PY) -m tokencomp.cli bench serve --scaled --rounds 3 --requests 8 --budgets 64 128 --long-tokens 0 --out bench/scaled
	$(PY) -m tokencomp.cli bench soak --out bench

bench-select: setup
	$(PY) -m tokencomp.cli bench select $(ARGS)

lint: setup
	$(PY) -m ruff check tokencomp serving eval training demo tests

clean:
	rm -rf .venv build *.egg-info
