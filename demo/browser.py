"""Drive the running demo in headless Chromium (Debian's package) with Playwright: used by
`make demo-screenshot` and by the browser test, so the page is exercised the way a person uses it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

# Chromium on a machine with no network: without these it retries Google services at every start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    return path


def upload(page: Page, image: Path) -> None:
    """Put `image` in the file box, clearing a previous upload first (the box then hides its file input)."""
    if page.locator("#image input[type=file]").count() == 0:
        page.locator("#image button[aria-label='Clear']").click()
    page.set_input_files("#image input[type=file]", str(image))


def ask(page: Page, image: Path | None, question: str, method: str, budget: int, timeout_ms: int = 120_000) -> dict:
    """Fill the form (keeping the current image when `image` is None), press Ask, wait for the answer; returns
    the status, the answer text and the overlay's src."""
    if image is not None:
        upload(page, image)
    page.fill("#question textarea", question)
    page.locator("#budget input[type=number]").fill(str(budget))
    page.locator("#budget input[type=number]").press("Enter")
    dropdown = page.locator("input[aria-label='Method']")
    dropdown.fill(method)
    dropdown.press("Enter")
    old = page.locator("#overlay img").get_attribute("src") if page.locator("#overlay img").count() else None
    page.click("#ask")
    page.wait_for_function(
        "old => { const img = document.querySelector('#overlay img');"
        " return img && img.src && img.src !== old && document.querySelector('#answer').innerText.includes('prompt tokens'); }",
        arg=old, timeout=timeout_ms)
    return {"answer": page.inner_text("#answer"), "status": page.inner_text("#status"),
            "overlay": page.locator("#overlay img").get_attribute("src")}


def open_page(playwright, url: str) -> Page:
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#ask")
    return page


def wait_for(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(1)


def screenshot(model: str, image: Path, question: str, out: Path, port: int = 7899) -> Path:
    """Start the demo, ask one real question with ITG at 64 tokens and the full-model comparison, save a PNG."""
    demo = subprocess.Popen([sys.executable, "-m", "tokencomp.cli", "demo", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url)
        with sync_playwright() as p:
            page = open_page(p, url)
            page.check("#compare input[type=checkbox]")
            ask(page, image, question, "itg", 64)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the demo after a real question.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", type=Path, default=None, help="default: test scene --scene, rendered")
    parser.add_argument("--scene", type=int, default=3, help="index of the generated test scene to ask about")
    parser.add_argument("--question", default="What colour is the circle?")
    parser.add_argument("--out", type=Path, default=Path("demo/screenshot.png"))
    args = parser.parse_args(argv)
    image = args.image
    if image is None:
        from tokencomp.training import scenes

        image = args.out.with_name("example.png")
        image.parent.mkdir(parents=True, exist_ok=True)
        scenes.render(scenes.make_scene("test", args.scene)).save(image)
    print(screenshot(args.model, image, args.question, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
