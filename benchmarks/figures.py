"""A Plotly figure as a PNG for the README, drawn by headless Chromium (no kaleido in this project)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def write_png(fig, path: Path, width: int, height: int) -> None:
    """Write ``fig`` (sized ``width`` × ``height``) to ``path`` through a self-contained HTML page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.update_layout(width=width, height=height)
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": width + 20, "height": height + 20})
            page.goto(html.absolute().as_uri())
            page.wait_for_selector(".js-plotly-plot")
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        html.unlink(missing_ok=True)
