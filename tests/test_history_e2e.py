"""The History tab in a real browser (headless Chromium, the tiny model): a pruned step appears in the table and
the scatter, "Load its settings" moves the sliders back to it and the preview redraws for them, and a session
file saved from the tab loads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app_e2e import (
    CHROMIUM,
    plot_data,
    studio_page,
    studio_url,
    type_into,
    wait_plan_for,
    wait_status,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: run scripts/setup.sh --browser (Debian package chromium)"),
]
__all__ = ["studio_url"]  # the module's own server (the fixture of test_app_e2e)


def target_value(page) -> str:
    return page.locator("#target input[type=number]").input_value()


def test_a_step_is_in_the_history_and_load_its_settings_moves_the_sliders(studio_url, tmp_path):
    with studio_page(studio_url) as page:
        type_into(page, "target", "70")
        page.click("#step-btn")
        wait_status(page, "Step 1 done", timeout=120_000)

        page.get_by_role("tab", name="History").click()
        page.wait_for_function("() => document.querySelector('#hist-table').innerText.includes('one step: step 1')",
                               timeout=30_000)
        table = page.locator("#hist-table").inner_text()
        assert "prune" in table and "adaptive" in table and "70" in table
        scatter = plot_data(page, "hist-scatter")["data"]
        assert len(scatter) == 1 and len(scatter[0]["x"]) == 1  # the step, with its measured perplexity
        assert scatter[0]["name"] == "prune · adaptive"

        type_into(page, "target", "45")  # somewhere else
        type_into(page, "amplitude", "0")
        wait_plan_for(page, "target 45 %")

        # a click on a row of the table selects its run
        page.locator("#hist-table [data-testid=cell-0-1]").click()
        page.wait_for_function("() => document.querySelector('#hist-detail').innerText.includes('one step')",
                               timeout=30_000)
        assert page.locator("#hist-pick input").input_value().startswith("#1 · prune · adaptive")
        widths = plot_data(page, "hist-widths")["data"]
        assert len(widths[0]["y"]) == 3  # one bar per layer of the tiny model
        page.click("#hist-load")
        page.wait_for_function("() => document.querySelector('#target input[type=number]').value === '70'",
                               timeout=30_000)
        assert float(page.locator("#amplitude input[type=number]").input_value()) == 0.02
        wait_plan_for(page, "target 70 %")  # the preview redrew for the loaded settings
        assert "Loaded the settings of run #1" in page.locator("#hist-note").inner_text()

        page.click("#sess-save")
        wait_status(page, "Saved the session", timeout=60_000)
        saved = page.locator("#sess-file a").first.get_attribute("href")
        assert saved and "studio-session-" in saved


def test_a_session_file_with_its_model_loads_into_the_page(studio_url, tmp_path):
    from tests.test_app_e2e import params_count
    from tests.test_session import tiny_session

    s = tiny_session(target=0.85, window=64)  # the page's startup model, pruned one step elsewhere
    s.schedule.step()
    s.quality.quick_eval("The")
    path = s.save_session(tmp_path, with_model=True)
    with studio_page(studio_url) as page:
        p0 = params_count(page)
        page.get_by_role("tab", name="History").click()
        page.set_input_files("#sess-upload input[type=file]", str(path))
        wait_status(page, "Loaded the session file", timeout=60_000)
        assert params_count(page) == s.work.params() < p0
        assert "1 step(s) taken" in page.locator("#summary").inner_text()
        page.wait_for_function("() => document.querySelector('#hist-table').innerText.includes('one step: step 1')",
                               timeout=30_000)
        assert target_value(page) == "85"
        page.get_by_text("Calibration data").click()
        assert page.locator("#window input[type=number]").input_value() == "64"
        assert plot_data(page, "layer-heatmap")["data"][0]["x"] == ["step 1"]  # the loaded record's measurement
        page.click("#measure")  # the loaded model measures and plans on in the page
        wait_status(page, "Measured")
        wait_plan_for(page, "target 85 %")
        assert plot_data(page, "layer-heatmap")["data"][0]["x"] == ["step 1", "step 2 (next)"]
