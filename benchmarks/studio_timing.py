"""Studio timing: launch → first importance heatmap, and one prune step including its quick evaluation.

    .venv/bin/python benchmarks/studio_timing.py [--model default] [--steps 2] [--out benchmarks/results/studio_timing_session.json]
    .venv/bin/python benchmarks/studio_timing.py --browser [--screenshots assets/screenshots] [--accel | --evaluate]

Session mode times the library path the UI handlers take (imports, model load from the cache, importance
measurement, figures; then ``step`` + ``quick_eval`` + figures). Browser mode starts ``app.py`` as a subprocess,
drives it in headless Chromium (Playwright) and times what a visitor sees: from the process start to the first
heatmap on screen, and from a click on "Prune one step" to its evaluation on screen; with ``--screenshots`` it
saves PNGs of the page along the way; with ``--accel`` it goes on with a Train round (default 16,384 tokens),
Adapt-Accel to the target (5 stages, 32,768 tokens) and the zero-shot comparison, and times each; with
``--evaluate`` it runs to the target, then the uniform baseline, then the Evaluate tab's zero-shot comparison of
the original, the adaptive and the uniform model (the tab's defaults: ARC-Easy and PIQA, 50 examples each).
Both write JSON with the settings and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(), "loadavg_1m": os.getloadavg()[0]}


def session_timing(model: str, steps: int, prompt: str, device: str = "auto") -> dict:
    """Time the StudioSession path; figures are built as the UI would build them."""
    import visualizations as viz
    from studio import StudioSession, StudioSettings

    t_imports = time.perf_counter()
    s = StudioSession.load(model, device=device, settings=StudioSettings())
    t_load = time.perf_counter()
    imp = s.schedule.measure()
    labels, cols = s.schedule.importance_columns()
    viz.layer_importance_heatmap(cols, labels)
    viz.unit_importance_heatmap(imp.group_scores, imp.channel_scores, criterion=imp.criterion)
    t_heatmap = time.perf_counter()
    out = {
        "settings": s.settings.public(),
        "quick_perplexity": s.settings.quick_ppl.describe(),
        "seconds_imports": t_imports - T_START,
        "seconds_load_model": t_load - t_imports,
        "seconds_measure_importance": imp.seconds,
        "seconds_launch_to_first_heatmap": t_heatmap - T_START,
        "steps": [],
    }
    for k in range(steps):
        t0 = time.perf_counter()
        rec = s.schedule.step()
        t1 = time.perf_counter()
        ev = s.quality.quick_eval(prompt)
        s.schedule.preview()
        a, m, _ = s.schedule.sparsity_history()
        viz.trajectory_figure([p.params for p in s.quality.trajectory], [p.perplexity for p in s.quality.trajectory])
        viz.architecture_figure(list(s.pruner.origin.widths), s.work.widths())
        t2 = time.perf_counter()
        out["steps"].append({
            "step": k + 1, "params": rec.params_total, "fraction_of_original": rec.fraction_of_original,
            "seconds_step": t1 - t0, "seconds_importance": rec.seconds_importance,
            "seconds_quick_eval": t2 - t1, "seconds_total": t2 - t0,
            "includes_original_reference": k == 0,
            "perplexity": ev.perplexity["perplexity"], "tokens_per_s": ev.tokens_per_s,
        })
        print(f"step {k + 1}: {t2 - t0:.1f} s ({t1 - t0:.1f} s step + {t2 - t1:.1f} s evaluation"
              f"{', incl. the original reference' if k == 0 else ''})", flush=True)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browser_timing(model: str, steps: int, shots: Path | None, accel: bool = False,
                   evaluate: bool = False, compare: bool = False) -> dict:
    """Start app.py, drive it in headless Chromium, time what the page shows."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {"port": port, "steps": []}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            while True:  # the server is up when the page answers
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if proc.poll() is not None or time.perf_counter() - t0 > 180:
                        raise RuntimeError("app.py did not start") from None
                    time.sleep(0.5)

            def wait_status(pattern: str, timeout: float = 300_000) -> None:
                page.wait_for_function("p => { const e = document.querySelector('#status');"
                                       " return e !== null && new RegExp(p).test(e.innerText); }",
                                       arg=pattern, timeout=timeout)

            def tab_run(tab: str, button: str, done: str, key: str, table: str, timeout: float) -> None:
                """Press a tab's button with its defaults: time it until the status says ``done``, keep its table."""
                page.get_by_role("tab", name=tab).click()
                t1 = time.perf_counter()
                page.click(button)
                wait_status(done, timeout=timeout)
                out[f"seconds_{key}"] = time.perf_counter() - t1
                out[f"{key}_table"] = page.locator(table).inner_text()

            def zero_shot(full_page: bool) -> None:
                """The Evaluate tab's comparison with its defaults: time it, keep the table, screenshot it."""
                tab_run("Evaluate", "#zs-btn", "Zero-shot evaluation done", "zero_shot", "#zs-table", 1_800_000)
                page.wait_for_timeout(800)
                if shots:
                    page.screenshot(path=str(shots / "studio_evaluate.png"), full_page=full_page)

            wait_status("Ready")
            out["seconds_launch_to_ready"] = time.perf_counter() - t0
            if shots:
                page.screenshot(path=str(shots / "studio_start.png"), full_page=True)
            page.click("#measure")
            wait_status("Measured")
            page.wait_for_function("() => { const gd = document.querySelector('#layer-heatmap .js-plotly-plot');"
                                   " return gd && gd.data.length > 0; }")
            out["seconds_launch_to_first_heatmap"] = time.perf_counter() - t0
            page.wait_for_timeout(800)
            if shots:
                page.screenshot(path=str(shots / "studio_importance.png"), full_page=True)
            for k in range(steps):
                t1 = time.perf_counter()
                page.click("#step-btn")
                wait_status(f"Step {k + 1} done")
                out["steps"].append({"step": k + 1, "seconds_click_to_evaluated": time.perf_counter() - t1,
                                     "includes_original_reference": k == 0})
                print(f"browser step {k + 1}: {out['steps'][-1]['seconds_click_to_evaluated']:.1f} s", flush=True)
            page.wait_for_timeout(800)
            if shots:
                page.screenshot(path=str(shots / "studio_after_steps.png"), full_page=True)
                page.get_by_role("tab", name="Architecture").click()
                page.wait_for_timeout(800)
                page.screenshot(path=str(shots / "studio_architecture.png"), full_page=False)
                page.get_by_role("tab", name="Studio").click()
            if accel:  # a Train round, then Adapt-Accel to the target, then the zero-shot comparison
                page.get_by_text("Recovery training · Adapt-Accel").click()
                t1 = time.perf_counter()
                page.click("#train-btn")
                wait_status("Training done")
                out["seconds_train_round"] = time.perf_counter() - t1
                out["train_status"] = page.locator("#status").inner_text()
                t1 = time.perf_counter()
                page.click("#accel-btn")
                wait_status("Adapt-Accel done", timeout=1_800_000)
                out["seconds_adapt_accel"] = time.perf_counter() - t1
                out["adapt_accel_status"] = page.locator("#status").inner_text()
                print(f"train round {out['seconds_train_round']:.0f} s; Adapt-Accel {out['seconds_adapt_accel']:.0f} s",
                      flush=True)
                page.wait_for_timeout(800)
                if shots:
                    page.screenshot(path=str(shots / "studio_adapt_accel.png"), full_page=True)
                zero_shot(full_page=False)
            if evaluate:  # run to the target, the uniform baseline, then the three-way zero-shot comparison
                t1 = time.perf_counter()
                page.click("#run")
                wait_status("Target reached", timeout=1_800_000)
                out["seconds_run_to_target"] = time.perf_counter() - t1
                t1 = time.perf_counter()
                page.click("#baseline")
                wait_status("Uniform baseline done", timeout=1_800_000)
                out["seconds_uniform_baseline"] = time.perf_counter() - t1
                zero_shot(full_page=True)
                print(f"run to target {out['seconds_run_to_target']:.0f} s; uniform baseline "
                      f"{out['seconds_uniform_baseline']:.0f} s; zero-shot {out['seconds_zero_shot']:.0f} s", flush=True)
            if compare:  # the Compare methods tab with its defaults (every method to the schedule's target)
                tab_run("Compare methods", "#cmp-btn", "Comparison done", "compare", "#cmp-table", 3_600_000)
                print(f"comparison {out['seconds_compare']:.0f} s", flush=True)
                page.wait_for_timeout(1500)
                if shots:
                    page.screenshot(path=str(shots / "studio_compare.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--browser", action="store_true", help="time the real app in headless Chromium instead")
    p.add_argument("--screenshots", type=Path, default=None, help="browser mode: save PNGs here")
    p.add_argument("--accel", action="store_true",
                   help="browser mode: then a Train round, Adapt-Accel to the target and the zero-shot comparison")
    p.add_argument("--evaluate", action="store_true",
                   help="browser mode: then run to the target, the uniform baseline and the zero-shot comparison "
                        "(dense vs adaptive vs uniform)")
    p.add_argument("--compare", action="store_true",
                   help="browser mode: then the Compare methods tab with its default methods (screenshot)")
    p.add_argument("--device", default="auto", help="session mode: auto, cpu or cuda")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.browser:
        if a.screenshots:
            a.screenshots.mkdir(parents=True, exist_ok=True)
        result = {"mode": "browser", **browser_timing(a.model, a.steps, a.screenshots, a.accel, a.evaluate,
                                                      a.compare)}
    else:
        result = {"mode": "session", **session_timing(a.model, a.steps, a.prompt, a.device)}
    result.update(model=a.model, machine=machine(), command=" ".join(sys.argv))
    out = a.out or ROOT / "benchmarks" / "results" / f"studio_timing_{result['mode']}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k.startswith("seconds") or k == "steps"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
