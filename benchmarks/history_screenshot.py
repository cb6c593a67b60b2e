"""A screenshot of the studio's History tab on the tests' tiny model, for docs/studio.md.

    PYTHONPATH=. .venv/bin/python benchmarks/history_screenshot.py --out assets/screenshots

It serves the studio on 127.0.0.1 (a free port), runs to a target of 90 %, compares adaptive and ShortGPT at 80 %
(Compare tab), opens the History tab, selects the first run and saves ``studio_history.png``; the server is stopped
at the end.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.studio_screenshots import out_dir, tiny_studio_browser, type_into, wait_status


def walk(page, out: Path, name: str) -> None:
    wait_status(page, "Ready")
    type_into(page, "target", "90")
    page.click("#run")
    wait_status(page, "Target reached")
    type_into(page, "target", "80")
    page.get_by_role("tab", name="Compare methods").click()
    # the default ticks are adaptive, uniform and shortgpt: keep two, for a short run
    page.locator("#cmp-methods label").filter(has_text="uniform").click()
    page.click("#cmp-btn")
    wait_status(page, "Comparison done")
    page.get_by_role("tab", name="History").click()
    page.wait_for_function("() => document.querySelector('#hist-table').innerText.includes('comparison: shortgpt')",
                           timeout=60_000)
    page.locator("#hist-table [data-testid=cell-0-1]").click()
    page.wait_for_function("() => document.querySelector('#hist-detail').innerText.includes('run to target')",
                           timeout=60_000)
    page.wait_for_timeout(1500)  # the widths figure draws
    page.locator(".tabs").first.screenshot(path=str(out / name))


def main() -> None:
    out = out_dir(__doc__)
    with tiny_studio_browser() as (browser, url):
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(url + "?__theme=light")
        walk(page, out, "studio_history.png")
        print("saved", out / "studio_history.png")


if __name__ == "__main__":
    main()
