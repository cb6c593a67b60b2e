"""Screenshots of the studio on the tests' tiny model, light, dark and narrow (a phone), for docs/studio.md.

    PYTHONPATH=. .venv/bin/python benchmarks/studio_screenshots.py --out assets/screenshots

It serves the studio on 127.0.0.1 (a free port), measures importance, types a target of 0 (to show the page's own
explanation), sets the target to 70 %, takes one step and saves ``studio_light.png``, ``studio_dark.png`` and
``studio_narrow.png``; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def wait_status(page, pattern: str, timeout: float = 180_000) -> None:
    page.wait_for_function("p => { const e = document.querySelector('#status');"
                           " return e !== null && new RegExp(p).test(e.innerText); }", arg=pattern, timeout=timeout)


def type_into(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.scroll_into_view_if_needed()
    box.fill(value)
    box.press("Tab")


def walk(page, out: Path, name: str) -> None:
    """Measure, show the explanation of a bad target, then plan for 70 % and take one step."""
    wait_status(page, "Ready")
    page.click("#measure")
    wait_status(page, "Measured")
    type_into(page, "target", "70")
    page.wait_for_function("() => document.querySelector('#alloc-note').innerText.includes('Plan for target 70 %')",
                           timeout=120_000)
    page.click("#step-btn")
    wait_status(page, "Step 1 done")
    type_into(page, "target", "0")
    page.wait_for_function("() => document.querySelector('#input-note').innerText.includes('Kept 70 %')")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(out / name), full_page=False)


@contextmanager
def tiny_studio_browser():
    """The studio on the tests' tiny model served on a free local port, and headless Chromium: ``(browser, url)``;
    both are closed on the way out."""
    from playwright.sync_api import sync_playwright

    from studio.ui import CSS, build_demo
    from tests.test_app_e2e import free_port
    from tests.test_session import tiny_model, tiny_tokenizer

    demo = build_demo(tiny_model(), tiny_tokenizer(), source="tiny")
    port = free_port()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=CSS)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                yield browser, f"http://127.0.0.1:{port}/"
            finally:
                browser.close()
    finally:
        demo.close()


def out_dir(doc: str) -> Path:
    """``--out`` of a screenshot script (created)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="assets/screenshots")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> None:
    out = out_dir(__doc__)
    with tiny_studio_browser() as (browser, url):
        for name, query, size in (("studio_light.png", "?__theme=light", (1500, 1250)),
                                  ("studio_dark.png", "?__theme=dark", (1500, 1250)),
                                  ("studio_narrow.png", "?__theme=light", (420, 1400))):
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url + query)
            walk(page, out, name)
            page.close()
            print("saved", out / name)


if __name__ == "__main__":
    main()
