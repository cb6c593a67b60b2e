"""The Learn tab in a real browser (headless Chromium, the tiny model), and the page polish of issue 19 that only a
browser shows: whole slider labels, uncut plot titles on a narrow screen, the Train cost following its controls."""

from __future__ import annotations

from tests import test_app_e2e as e2e
from tests.test_app_e2e import ARGS, CHROMIUM, plot_data, studio_page, type_into, wait_status

pytestmark = e2e.pytestmark  # browser tests, skipped without Chromium
studio_url = e2e.studio_url  # the same fixture: the studio on the tiny model


def wait_note(page, words: str, timeout: float = 120_000) -> None:
    page.wait_for_function("w => document.querySelector('#tour-note').innerText.includes(w)", arg=words,
                           timeout=timeout)


def goto_step(page, k: int) -> None:
    page.wait_for_function(f"() => document.querySelector('#tour-pos').innerText.includes('Step {k} of 5')")


def test_the_tour_runs_start_to_end(studio_url):
    with studio_page(studio_url) as page:
        page.get_by_role("tab", name="Learn").click()
        goto_step(page, 1)
        page.click("#tour-next")  # step 2 first: it says what is missing
        goto_step(page, 2)
        page.click("#tour-act")
        wait_note(page, "Go to step 1")
        page.click("#tour-back")
        goto_step(page, 1)
        assert page.locator("#tour-act").inner_text() == "Measure layer importance"

        page.click("#tour-act")
        wait_note(page, "Measured on")
        bars = plot_data(page, "tour-fig")["data"][0]
        assert len(bars["x"]) == 3 and all(0 < v < 1 for v in bars["x"])  # 1 − cos per layer
        assert plot_data(page, "layer-heatmap")["data"]  # the Studio tab's heatmaps were filled too

        page.click("#tour-next")
        goto_step(page, 2)
        page.click("#tour-act")
        wait_note(page, "Both plans reach")
        low, high, diff = plot_data(page, "tour-fig")["data"]
        assert low["name"] == "A = 0" and high["name"] == "A = 0.1" and any(abs(d) > 0.01 for d in diff["x"])

        page.click("#tour-next")
        goto_step(page, 3)
        page.locator("#tour-layer input").click()
        page.locator("#tour-layer li[role=option][aria-label='2']").click()
        page.click("#tour-act")
        wait_note(page, "Layer 2 has 4 KV groups")
        groups, channels = plot_data(page, "tour-fig")["data"]
        assert groups["x"][0] == "KV 0<br>q 0–1" and len(channels["y"]) == 96

        page.click("#tour-next")
        goto_step(page, 4)
        page.click("#tour-act")
        wait_note(page, "most important of 3")
        fig = plot_data(page, "tour-fig")
        assert {t["name"] for t in fig["data"]} >= {"KV group (with its query heads): kept"}
        assert fig["layout"]["shapes"]  # the layer's budget for the step
        page.locator("#tour-fig").scroll_into_view_if_needed()
        page.screenshot(path="/tmp/tour_step4.png", full_page=True)

        page.click("#tour-next")
        goto_step(page, 5)
        assert page.locator("#tour-next").is_disabled()
        page.click("#tour-act")
        wait_note(page, "2 step(s) on the trajectory", timeout=240_000)
        traj = plot_data(page, "tour-fig")["data"][0]
        assert len(traj["x"]) == 3 and traj["x"][2] < traj["x"][0]  # the original and two steps, smaller
        assert "2 step(s) taken" in page.locator("#summary").inner_text()  # the session's model was pruned

        page.get_by_role("tab", name="Studio").click()  # another action elsewhere, then back: the step still works
        page.click("#undo")
        wait_status(page, "Undid step 2")
        page.get_by_role("tab", name="Learn").click()
        goto_step(page, 5)
        page.click("#tour-back")
        goto_step(page, 4)
        page.click("#tour-act")
        wait_note(page, "changed since the last measurement")


SLIDER_LABELS_CUT = """() => [...document.querySelectorAll('.slider_input_container')].map(c => {
   let b = c; while (b && !b.classList.contains('block')) b = b.parentElement;
   const br = b.getBoundingClientRect(); const cut = [];
   for (const s of c.querySelectorAll('.min_value, .max_value')) { const r = s.getBoundingClientRect();
     if (r.width && (r.right > br.right - 1 || r.left < br.left + 1)) cut.push(s.textContent); }
   return [b.id, cut]; }).filter(x => x[1].length)"""

TITLES_CUT = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
   const svg = gd.querySelector('.main-svg'), t = gd.querySelector('.gtitle'); if (!t || !svg) return null;
   let p = gd; while (p && !p.id) p = p.parentElement;
   return [p && p.id, Math.round(t.getBoundingClientRect().right - svg.getBoundingClientRect().right)];
 }).filter(x => x && x[1] > 0)"""


def test_slider_labels_whole_and_plot_titles_uncut_on_a_narrow_screen(studio_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for width in (1500, 1100, 400):
            page = browser.new_page(viewport={"width": width, "height": 1100})
            page.goto(studio_url)
            wait_status(page, "Ready")
            for box in ("Calibration data", "Quick evaluation", "Recovery training · Adapt-Accel"):
                page.get_by_text(box).first.click()
            page.wait_for_timeout(300)
            assert page.evaluate(SLIDER_LABELS_CUT) == [], width  # "10" was shown as "1"
            assert page.locator("#step .max_value").inner_text() == "10"
            page.click("#measure")
            wait_status(page, "Measured")
            assert page.evaluate(TITLES_CUT) == [], width  # the unit heatmap's title was cut at 400 px
            if width == 400:
                page.locator("#unit-heatmap").screenshot(path="/tmp/unit_heatmap_400.png")
                page.get_by_role("tab", name="Learn").click()  # the tour's pictures too
                for step in range(1, 4):
                    if step > 1:
                        page.click("#tour-next")
                        goto_step(page, step)
                    page.click("#tour-act")
                    wait_note(page, ("Measured on", "Both plans reach", "KV groups of")[step - 1])
                    page.wait_for_timeout(500)
                    assert page.evaluate(TITLES_CUT) == [], step
        browser.close()


def test_the_train_cost_follows_a_typed_training_or_schedule_value(studio_url):
    with studio_page(studio_url) as page:
        page.get_by_text("Recovery training · Adapt-Accel").click()
        cost = page.locator("#train-cost")
        page.wait_for_function("() => document.querySelector('#train-cost').innerText.includes('16 optimiser steps')")
        type_into(page, "train-tokens", "32768")  # typed into the number box, not dragged
        page.wait_for_function("() => document.querySelector('#train-cost').innerText.includes('32 optimiser steps')",
                               timeout=20_000)
        before = cost.inner_text().split("**Adapt-Accel**")[-1] if "**" in cost.inner_text() else \
            cost.inner_text().split("Adapt-Accel:")[-1]
        type_into(page, "stages", "8")
        page.wait_for_function("() => document.querySelector('#train-cost').innerText.includes('8 stages')",
                               timeout=20_000)
        assert "18 quick perplexities" in cost.inner_text()  # the start, 2 per stage, the evaluation's
        type_into(page, "target", "60")
        page.wait_for_function("b => !document.querySelector('#train-cost').innerText.endsWith(b)",
                               arg=before, timeout=20_000)
        page.click("#measure")  # redrawing the page after an action keeps the training values on screen
        wait_status(page, "Measured")
        page.wait_for_timeout(1500)
        assert "32 optimiser steps" in cost.inner_text() and "8 stages" in cost.inner_text()
        accel = cost.inner_text().split("Adapt-Accel")[-1]
        page.click("#step-btn")  # a smaller model: the Adapt-Accel estimate is redone with the values on screen
        wait_status(page, "Step 1 done", timeout=120_000)
        page.wait_for_function("b => !document.querySelector('#train-cost').innerText.endsWith(b)", arg=accel,
                               timeout=20_000)
        assert "32 optimiser steps" in cost.inner_text() and "8 stages" in cost.inner_text()
