"""End to end in a real browser: the studio on a tiny model, driven by Playwright in headless Chromium."""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: run scripts/setup.sh --browser (Debian package chromium)"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio_url():
    from studio.ui import CSS, build_demo
    from tests.test_session import tiny_model, tiny_tokenizer

    demo = build_demo(tiny_model(), tiny_tokenizer(), source="tiny")
    port = free_port()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=CSS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def plot_data(page, elem_id: str):
    """The Plotly figure (data and layout) rendered inside a gr.Plot."""
    page.wait_for_selector(f"#{elem_id} .js-plotly-plot", state="attached", timeout=30_000)
    return page.evaluate(
        """id => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
                   return gd ? {data: gd.data, layout: gd.layout} : null; }""", elem_id)


@contextmanager
def studio_page(url: str):
    """A headless Chromium page on the studio, its session ready."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        wait_status(page, "Ready")
        yield page
        browser.close()


def params_count(page) -> int:
    text = page.locator("#summary").inner_text()
    return int(re.search(r"([\d,]+) parameters", text).group(1).replace(",", ""))


def wait_status(page, pattern: str, timeout: float = 60_000) -> None:
    page.wait_for_function("p => { const e = document.querySelector('#status');"
                           " return e !== null && new RegExp(p).test(e.innerText); }", arg=pattern, timeout=timeout)


def test_measure_move_a_slider_and_prune(studio_url):
    with studio_page(studio_url) as page:
        p0 = params_count(page)
        assert plot_data(page, "layer-heatmap")["data"] == []  # nothing measured yet

        page.click("#measure")
        wait_status(page, "Measured")
        layer = plot_data(page, "layer-heatmap")["data"][0]
        assert len(layer["z"]) == 3 and layer["x"] == ["step 1 (next)"]
        unit = plot_data(page, "unit-heatmap")["data"]
        assert len(unit) == 2 and len(unit[0]["z"]) == 3
        planned = len(plot_data(page, "alloc-heatmap")["data"][0]["x"])
        assert planned >= 1

        # move the target slider down (a drag ends with a release event): the preview plans more steps
        slider = page.locator("#target input[type=range]")
        slider.scroll_into_view_if_needed()  # clicking Measure may have scrolled it out of the viewport
        box = slider.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
        page.wait_for_function(
            "n => { const gd = document.querySelector('#alloc-heatmap .js-plotly-plot');"
            " return gd && gd.data.length && gd.data[0].x.length > n; }", arg=planned, timeout=30_000)
        preview = plot_data(page, "alloc-heatmap")["data"]
        planned_attn = [row[0] for row in preview[0]["z"]]  # the first planned column, per layer
        planned_mlp = [row[0] for row in preview[1]["z"]]

        page.click("#step-btn")
        wait_status(page, "Step 1 done", timeout=120_000)
        assert params_count(page) < p0
        layer = plot_data(page, "layer-heatmap")["data"][0]
        assert layer["x"] == ["step 1"]  # the measurement the step used
        alloc = plot_data(page, "alloc-heatmap")
        assert len(alloc["layout"]["shapes"]) == 2  # taken │ preview separator after one step
        traj = plot_data(page, "trajectory")["data"][0]
        assert len(traj["x"]) == 2 and traj["x"][1] < traj["x"][0]
        assert "perplexity" in page.locator("#metrics").inner_text()

        page.get_by_role("tab", name="Architecture").click()
        arch = plot_data(page, "arch")["data"]
        removed = sum(arch[1]["x"]) + sum(arch[3]["x"])  # KV groups and channels removed
        assert removed > 0
        # the preview before the step is what the step did: the share removed per layer, attention and MLP
        cut_attn = [r / (k + r) for k, r in zip(arch[0]["x"], arch[1]["x"], strict=True)]
        cut_mlp = [r / (k + r) for k, r in zip(arch[2]["x"], arch[3]["x"], strict=True)]
        assert cut_attn == pytest.approx(planned_attn, abs=1e-9)
        assert cut_mlp == pytest.approx(planned_mlp, abs=1e-9)

        page.get_by_role("tab", name="Studio").click()
        page.click("#undo")
        wait_status(page, "Undid step 1")
        assert params_count(page) == p0


def test_train_then_adapt_accel_then_compare_zero_shot(studio_url):
    with studio_page(studio_url) as page:
        p0 = params_count(page)
        assert plot_data(page, "loss-curve")["data"] == []

        page.get_by_text("Recovery training · Adapt-Accel").click()
        assert "16 optimiser steps" in page.locator("#train-cost").inner_text()  # the cost, before anything runs
        page.click("#train-btn")
        wait_status(page, "Training done", timeout=180_000)
        loss = plot_data(page, "loss-curve")["data"][0]
        assert len(loss["y"]) == 16  # 16,384 tokens at 4 × 256 per optimiser step
        traj = plot_data(page, "trajectory")["data"]
        assert [t["name"] for t in traj] == ["recovery training"] and len(traj[0]["y"]) == 2
        assert params_count(page) == p0  # training does not prune

        page.click("#accel-btn")
        wait_status(page, "Adapt-Accel done", timeout=300_000)
        assert params_count(page) < p0
        names = [t["name"] for t in plot_data(page, "trajectory")["data"]]
        assert "Adapt-Accel (prune ↑, train ↓)" in names
        accel = next(t for t in plot_data(page, "trajectory")["data"] if t["name"].startswith("Adapt-Accel"))
        assert len(accel["y"]) == 1 + 2 * 5  # the start, then pruned and trained for each of the 5 stages
        layer = plot_data(page, "layer-heatmap")["data"][0]
        assert any("stage 1" in x for x in layer["x"]) and any("stage 5" in x for x in layer["x"])
        loss = plot_data(page, "loss-curve")
        assert len(loss["data"][0]["y"]) > 16
        assert [a["text"] for a in loss["layout"]["annotations"]][-1] == "stage 5"

        page.get_by_role("tab", name="Evaluate").click()
        page.click("#zs-btn")
        wait_status(page, "Zero-shot evaluation done", timeout=300_000)
        bars = plot_data(page, "zs-bars")["data"]
        steps = sum(1 for x in layer["x"] if "(next)" not in x)  # the last column: the changed model, measured after
        assert [b["name"] for b in bars] == ["original", "pruned (" + str(steps) + " steps)"]
        assert any("acc_norm" in x for x in bars[0]["x"])  # every task names its metric


def run_comparison(page, methods=("adaptive", "shortgpt")) -> None:
    """Open Compare methods, keep only ``methods`` checked, run, wait until it is done."""
    page.get_by_role("tab", name="Compare methods").click()
    box = page.locator("#cmp-methods")
    for label in box.locator("label").all():
        name = label.inner_text().strip()
        checkbox = label.locator("input[type=checkbox]")
        if checkbox.is_checked() != (name in methods):
            label.click()
    page.click("#cmp-btn")
    wait_status(page, "Comparison done", timeout=240_000)


def test_compare_two_methods(studio_url):
    with studio_page(studio_url) as page:
        p0 = params_count(page)
        run_comparison(page)
        traj = plot_data(page, "cmp-trajectory")["data"]
        assert [t["name"] for t in traj] == ["adaptive", "shortgpt"]
        assert all(t["x"][0] == p0 / 1e6 and t["x"][-1] < t["x"][0] for t in traj)  # from the original, down
        widths = plot_data(page, "cmp-widths")["data"]
        assert widths[0]["x"] == ["adaptive", "shortgpt"] and len(widths[0]["z"]) == 3
        assert any(row[1] == "✕" for row in widths[0]["text"])  # ShortGPT removed a layer whole
        diff = plot_data(page, "cmp-diff")["data"]
        assert diff[0]["x"] == ["shortgpt"]
        table = page.locator("#cmp-table").inner_text()
        assert "original" in table and "adaptive" in table and "shortgpt" in table and "done" in table
        assert "256-token windows" in page.locator("#cmp-note").inner_text()  # the page's quick perplexity
        files = page.locator("#cmp-files").inner_text()
        assert "adaptive-80pct-0.80" in files and "shortgpt-80pct-0.80" in files  # the default target in % and as a fraction
        assert params_count(page) == p0  # the working model is untouched


def type_into(page, elem_id: str, value: str) -> None:
    """Type into a slider's number box and leave it (what a visitor does)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.scroll_into_view_if_needed()
    box.fill(value)
    box.press("Tab")


def plan_note(page) -> str:
    return page.locator("#alloc-note").inner_text()


def wait_plan_for(page, label: str, timeout: float = 60_000) -> None:
    """Until the plot is drawn (not marked as recomputing) and its note names ``label``."""
    try:
        page.wait_for_function(
            "l => { const n = document.querySelector('#alloc-note'); const f = document.querySelector('#alloc-heatmap');"
            " return n && f && n.innerText.includes('Plan for ' + l) && !f.classList.contains('stale'); }",
            arg=label, timeout=timeout)
    except Exception as exc:  # what the page showed instead, to read in the failure
        seen = page.evaluate(
            "() => ({note: document.querySelector('#alloc-note')?.innerText,"
            " stale: document.querySelector('#alloc-heatmap')?.className,"
            " box: document.querySelector('#target input[type=number]')?.value,"
            " range: document.querySelector('#target input[type=range]')?.value,"
            " status: document.querySelector('#status')?.innerText})")
        raise AssertionError(f"no plan for {label!r}; the page showed {seen}") from exc


def no_framework_error(page) -> None:
    """No Gradio toast or error badge: every problem is said in the page's words."""
    assert page.locator(".toast-body").count() == 0
    body = page.locator("body").inner_text()
    assert "less than minimum" not in body and "greater than maximum" not in body


def test_fast_edits_end_with_the_preview_of_the_last_value(studio_url):
    with studio_page(studio_url) as page:
        page.click("#measure")
        wait_status(page, "Measured")
        for v in ("70", "50", "90", "45"):  # faster than a preview: each edit supersedes the one before
            type_into(page, "target", v)
        wait_plan_for(page, "target 45 %")
        title = plot_data(page, "alloc-heatmap")["layout"]["title"]["text"]
        assert "plan for target 45 %" in title
        steps = int(page.locator("#n-steps input[type=number]").input_value())
        assert f"+ {steps} more step(s)" in plan_note(page)  # the steps box follows the plan on screen
        slider = page.locator("#target input[type=range]")  # the arrow keys: "input" events, never a release
        slider.focus()
        for _ in range(6):
            slider.press("ArrowLeft")
        wait_plan_for(page, "target 39 %")
        assert "plan for target 39 %" in plot_data(page, "alloc-heatmap")["layout"]["title"]["text"]
        steps = int(page.locator("#n-steps input[type=number]").input_value())
        assert f"+ {steps} more step(s)" in plan_note(page)
        no_framework_error(page)


def test_bad_targets_are_explained_and_steps_set_delta_within_range(studio_url):
    with studio_page(studio_url) as page:
        page.click("#measure")
        wait_status(page, "Measured")
        for typed, words in (("0", "would remove every parameter"), ("0.9", "looks like a fraction"),
                             ("150", "can only shrink"), ("", "Type a target size")):
            type_into(page, "target", typed)
            page.wait_for_function("w => document.querySelector('#input-note').innerText.includes(w)", arg=words,
                                   timeout=20_000)
            assert "Kept 80 %" in page.locator("#input-note").inner_text()
            page.wait_for_function("() => document.querySelector('#target input[type=number]').value === '80'",
                                   timeout=20_000)
        no_framework_error(page)
        type_into(page, "target", "60")
        wait_plan_for(page, "target 60 %")
        type_into(page, "n-steps", "2")  # 2 steps to 60 % need more than Δ's maximum: clamped and said
        page.wait_for_function("() => document.querySelector('#input-note').innerText.includes('outside the slider')",
                               timeout=20_000)
        wait_plan_for(page, "target 60 %")
        delta = float(page.locator("#step input[type=number]").input_value())
        assert delta == 10
        page.wait_for_function("() => !document.querySelector('#alloc-note').innerText.includes('Computing')")
        steps = int(page.locator("#n-steps input[type=number]").input_value())
        assert f"+ {steps} more step(s)" in plan_note(page) and "Δ = 10 %" in plan_note(page)
        no_framework_error(page)


def test_cancel_during_a_run_reports_the_kept_steps_and_the_trajectory_has_them(studio_url):
    with studio_page(studio_url) as page:
        page.click("#run")
        wait_status(page, "Step 2 done; quick evaluation", timeout=180_000)
        page.click("#cancel")
        wait_status(page, "This run kept", timeout=180_000)
        status = page.locator("#status").inner_text()
        kept = int(re.search(r"kept (\d+) step", status).group(1))
        assert kept >= 2 and "unchanged" not in status
        traj = plot_data(page, "trajectory")["data"][0]
        assert len(traj["x"]) == kept + 1  # the original and every kept step
        assert f"step {kept}" in page.locator("#metrics").inner_text()


def contrast(page, selector: str) -> float:
    """WCAG contrast ratio between an element's text colour and its background colour."""
    return page.evaluate(
        """sel => { const e = document.querySelector(sel); const cs = getComputedStyle(e);
          const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lum = c => { const [r, g, b] = c.map(v => { v /= 255;
              return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
          const a = lum(rgb(cs.color)), b = lum(rgb(cs.backgroundColor));
          return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); }""", selector)


def test_dark_mode_narrow_screen_and_reset_asks_first(studio_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(studio_url + "?__theme=dark")
        wait_status(page, "Ready")
        assert page.evaluate("() => document.body.classList.contains('dark')")
        page.click("#measure")
        wait_status(page, "Measured")
        assert contrast(page, "#status") >= 4.5  # readable in dark mode
        layout = plot_data(page, "layer-heatmap")["layout"]
        assert layout["paper_bgcolor"].replace(" ", "") == "rgba(0,0,0,0)"  # the page's background shows
        page.screenshot(path=str(tmp_path / "dark.png"))

        page.click("#reset")  # Reset asks first; "Keep my model" keeps it
        page.wait_for_selector("#reset-confirm", state="visible")
        page.click("#reset-no")
        page.wait_for_selector("#reset-confirm", state="hidden")
        assert page.locator("#status").inner_text().startswith("Measured")

        phone = browser.new_page(viewport={"width": 400, "height": 800})
        phone.goto(studio_url)
        wait_status(phone, "Ready")
        plot_y = phone.locator("#layer-heatmap").bounding_box()["y"]
        # on a phone the controls come first, in the desktop's reading order: the status and the first button
        # within reach, not below some 4,000 px of empty plots
        assert phone.locator("#status").bounding_box()["y"] < phone.locator("#measure").bounding_box()["y"] < plot_y
        browser.close()
