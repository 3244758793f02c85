"""Request validation and input bounds without a server: the spec parser, the image guards, the engine's last
finite check, and the default image count (the served behaviour is in tests/test_serving_hostile.py)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from tokencomp.benchmarks.hostile import png, png_bomb
from tokencomp.serving import spec
from tokencomp.serving.limits import aspect_ratio_error, install_image_guards
from tokencomp.serving.server import images_in_context

P = spec.P


def _error(raw: dict) -> spec.SpecError:
    with pytest.raises(spec.SpecError) as err:
        spec.parse(raw, max_budget=576)
    return err.value


@pytest.mark.parametrize("raw, field, words", [
    ({"method": "itg", "budget": 8, "options": {"tau": 1e-39}}, f"{P}.options.tau", "non-finite"),
    ({"method": "itg", "budget": 8, "options": {"tau": 0}}, f"{P}.options.tau", "tau must be > 0"),
    ({"method": "itg", "budget": 8, "options": {"tau": float("inf")}}, f"{P}.options.tau", "finite number"),
    ({"method": "itg", "budget": 8, "options": {"restore_norm": 1}}, f"{P}.options.restore_norm", "true or false"),
    ({"method": "mmr", "budget": 8, "options": {"lam": 3}}, f"{P}.options.lam", "lam must be in [0, 1]"),
    ({"method": "pool", "budget": 8, "options": {"tau": 1}}, f"{P}.options.tau", "this method takes no options"),
    ({"method": "none", "budget": 8}, f"{P}.budget", "does not apply to method 'none'"),
])
def test_bad_options_name_the_option_and_why(raw, field, words):
    err = _error(raw)
    assert err.field == field and words in str(err)


def test_boolean_and_null_options_are_accepted_and_survive_the_trip_to_the_engine():
    parsed = spec.parse({"method": "itg", "budget": 8, "options": {"restore_norm": False, "rho": None}},
                        max_budget=576)
    assert parsed.options == {"restore_norm": False}
    rows = spec.encode(parsed, [576, 576])
    decoded = spec.decode(rows["tc_spec"][1], rows["tc_options"][1])
    assert decoded == parsed and type(decoded.options["restore_norm"]) is bool


@pytest.mark.parametrize(("budget", "counts", "kept"), [
    (16, [64, 10, 576], [16, 10, 16]),  # a count caps each image
    (0.25, [64, 10, 576], [16, 3, 144]),  # a fraction scales with each image (rounded half up)
    (0.3, [64, 1, 5], [19, 1, 2]),  # at least one token
])
def test_a_budget_is_a_count_or_a_fraction_of_each_image(budget, counts, kept):
    parsed = spec.parse({"method": "id_pruner", "budget": budget}, max_budget=576)
    assert parsed.budget == budget and type(parsed.budget) is type(budget)
    assert [parsed.tokens_out(n) for n in counts] == kept
    rows = spec.encode(parsed, counts)["tc_spec"]
    assert [spec.decode(row, torch.empty(0)).budget for row in rows] == kept  # the engine gets each count


@pytest.mark.parametrize("budget", [0, 577, 1.0, 0.0, -0.25, float("nan"), True, "16"])
def test_a_budget_outside_counts_and_fractions_is_refused_naming_both(budget):
    with pytest.raises(spec.SpecError) as err:
        spec.parse({"method": "id_pruner", "budget": budget}, max_budget=576)
    assert err.value.field == f"{spec.P}.budget"
    assert "an integer in [1, 576] (visual tokens per image) or a fraction in (0, 1)" in str(err.value)


def test_server_default_budget_does_not_leak_into_a_request_for_none():
    default = spec.Spec("itg", 64)
    assert spec.parse({"method": "none"}, max_budget=576, default=default) == spec.Spec()
    assert spec.parse({}, max_budget=576, default=default) == default


@pytest.mark.parametrize("size, refused", [((20000, 1), True), ((1, 100000), True), ((672, 33), True),
                                           ((672, 34), False), ((336, 336), False), ((1, 1), False)])
def test_aspect_ratio_bound(size, refused):
    why = aspect_ratio_error(*size, max_ratio=20)
    assert (why is not None) == refused
    if refused:
        assert f"{size[0]}x{size[1]}" in why and "up to 20:1" in why and "VLLM_" not in why


def test_image_guards_turn_pillow_bombs_and_vllms_limit_into_client_facing_errors(monkeypatch):
    from vllm.multimodal.media.image import ImageMediaIO

    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png_bomb()))  # what vLLM's loader let through as a 500
    install_image_guards()
    install_image_guards()  # idempotent: wrapping twice would still work, but must not stack
    assert ImageMediaIO.load_bytes.__wrapped__.__name__ == "load_bytes"
    assert not getattr(ImageMediaIO.load_bytes.__wrapped__, "tokencomp_guarded", False)
    loader = ImageMediaIO(image_mode="RGB")
    with pytest.raises(ValueError, match="at most .* pixels per image .*--max-image-pixels") as err:
        loader.load_bytes(png_bomb())
    assert "VLLM_" not in str(err.value)
    monkeypatch.setenv("VLLM_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ValueError, match=r"image is 50x40 \(2000 pixels\); this server accepts at most 1000") as err:
        loader.load_bytes(png(50, 40))
    assert "VLLM_" not in str(err.value)
    assert loader.load_bytes(png(20, 20)).media.size == (20, 20)


def test_non_finite_rows_never_reach_the_language_model():
    from tokencomp.serving.model import finite_rows

    tokens = torch.randn(6, 4)
    kept = tokens[[1, 4]] * 0.5
    assert finite_rows(tokens, kept, torch.tensor([1, 4]), "test") is kept
    poisoned = kept.clone()
    poisoned[0, 2] = float("nan")
    assert torch.equal(finite_rows(tokens, poisoned, torch.tensor([1, 4]), "test"), tokens[[1, 4]])
    poisoned[0, 2] = float("inf")
    assert torch.equal(finite_rows(tokens, poisoned, torch.tensor([1, 4]), "test"), tokens[[1, 4]])


@pytest.mark.parametrize("context, expected", [(1024, 1), (2048, 3), (576, 1), (4096, 7)])
def test_default_image_count_is_what_the_context_holds(tmp_path, context, expected):
    config = {"vision_config": {"image_size": 336, "patch_size": 14}, "text_config": {"max_position_embeddings": context}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert images_in_context(str(tmp_path), None) == expected
    assert images_in_context(str(tmp_path), 600) == 1
