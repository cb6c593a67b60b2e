"""The Explore tab in a real browser (tiny model, headless Chromium): the estimate before running, a sweep whose
curves appear, "use these settings" moving the schedule panel's sliders and redrawing its preview, and the What-if
button beside the allocation preview."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.settings import StudioSettings
from tests import test_app_e2e
from tests.test_app_e2e import (
    CHROMIUM,
    no_framework_error,
    params_count,
    plot_data,
    studio_page,
    wait_plan_for,
    wait_status,
)

studio_url = test_app_e2e.studio_url  # the fixture: the studio on the tiny model

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: run scripts/setup.sh --browser (Debian package chromium)"),
]


D = f"{100 * StudioSettings().prune.step:g}"  # the schedule panel's Δ (%), which the sweep keeps


def wait_text(page, elem_id: str, words: str, timeout: float = 60_000) -> None:
    page.wait_for_function("([id, w]) => { const e = document.querySelector('#' + id);"
                           " return e !== null && e.innerText.includes(w); }", arg=[elem_id, words], timeout=timeout)


def fill_box(page, elem_id: str, value: str) -> None:
    """Type into a textbox and leave it (its blur asks for a new estimate)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.scroll_into_view_if_needed()
    box.fill(value)
    box.press("Tab")


def slider_value(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def test_sweep_curve_then_use_these_settings_moves_the_sliders(studio_url):
    with studio_page(studio_url) as page:
        p0 = params_count(page)
        page.get_by_role("tab", name="Explore").click()
        wait_text(page, "exp-estimate", "Estimate")  # before anything runs: the time and what it measures
        assert "includes measuring importance" in page.locator("#exp-estimate").inner_text()

        fill_box(page, "exp-targets", "0.9")  # a fraction: explained next to the box in the page's words
        wait_text(page, "exp-note", "looks like a fraction")
        fill_box(page, "exp-targets", "90, 70")
        fill_box(page, "exp-amps", "0, 0.05")
        wait_text(page, "exp-estimate", "6 point(s)")  # adaptive × 2 targets × 2 amplitudes, uniform × 2 targets
        assert page.locator("#exp-note").inner_text().strip() == ""

        page.click("#exp-btn")
        wait_status(page, "Sweep done", timeout=240_000)
        curves = plot_data(page, "exp-curves")
        names = [t["name"] for t in curves["data"]]
        assert names[:3] == [f"adaptive · A 0 · Δ {D} %", f"adaptive · A 0.05 · Δ {D} %", f"uniform · Δ {D} %"]
        assert names[3].startswith("the model now: ") and len(names) == 4  # the dense model, a dotted line
        assert all(len(t["x"]) == 2 for t in curves["data"][:3])  # one point per target on every curve
        assert max(curves["layout"]["yaxis"]["range"]) < 5  # log axis (log10 units): no 1e35 from a misplaced label
        assert "wikitext2 valid, 128-token windows" in curves["layout"]["title"]["text"]
        pareto = plot_data(page, "exp-pareto")["data"]
        assert pareto[-1]["name"] == "Pareto front" and len(pareto[-1]["x"]) >= 1
        assert "6 of 6 point(s)" in page.locator("#exp-caption").inner_text()
        table = page.locator("#exp-table").inner_text()
        assert table.count("adaptive") == 4 and table.count("uniform") == 2 and "predicted perplexity" in table

        page.locator("#exp-pick input").click()
        page.get_by_role("option", name=f"adaptive · target 70 % · A 0.05 · Δ {D} %", exact=False).click()
        page.click("#exp-use")
        wait_text(page, "exp-note", "Sent adaptive · target 70 % · A 0.05")
        page.wait_for_function("() => document.querySelector('#target input[type=number]').value === '70'",
                               timeout=30_000)
        assert slider_value(page, "amplitude") == 0.05 and slider_value(page, "step") == float(D)
        assert page.locator("input[type=radio][value=adaptive]").is_checked()

        page.get_by_role("tab", name="Studio").click()
        wait_plan_for(page, f"target 70 % · A = 0.05 · Δ = {D} %")  # the preview redrew for the point's settings
        title = plot_data(page, "alloc-heatmap")["layout"]["title"]["text"]
        assert "plan for target 70 %" in title

        page.click("#whatif-btn")
        wait_text(page, "whatif-note", "What-if for target 70 % · A = 0.05", timeout=120_000)
        note = page.locator("#whatif-note").inner_text()
        assert "predicted perplexity" in note and note.count("wikitext2 valid, 128-token windows") == 2
        assert params_count(page) == p0  # exploring never cuts
        no_framework_error(page)
