"""Benchmark (issue 14): the studio's server memory as visitors come and go.

Starts ``app.py`` (the Space entry point) on the default model, then lets ``--visitors`` visitors arrive one
after the other in headless Chromium, each in its own browser context: open the page, press "Prune one step"
(which makes the visitor's private copy of the model), wait for the step, and — unless ``--keep-open`` — close
the tab. After every visitor it records the server's resident memory (VmRSS) and its peak (VmHWM).

    .venv/bin/python benchmarks/visitors.py --visitors 20 --out benchmarks/results/visitors_close.json
    .venv/bin/python benchmarks/visitors.py --visitors 8 --keep-open --out benchmarks/results/visitors_open.json
    .venv/bin/python benchmarks/visitors.py --repo /path/to/old/checkout ...   # the same against other code
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

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def memory_of(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return {"rss_bytes": fields["VmRSS"], "peak_rss_bytes": fields["VmHWM"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_status(page, pattern: str, timeout: float) -> str:
    page.wait_for_function("p => { const e = document.querySelector('#status');"
                           " return e !== null && new RegExp(p).test(e.innerText); }", arg=pattern, timeout=timeout)
    return page.locator("#status").inner_text()


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--visitors", type=int, default=20)
    a.add_argument("--keep-open", action="store_true", help="visitors never close their tab")
    a.add_argument("--repo", default=str(ROOT), help="the checkout whose app.py is started")
    a.add_argument("--python", default=sys.executable)
    a.add_argument("--settle", type=float, default=5.0, help="seconds to wait after a tab closes")
    a.add_argument("--out", required=True)
    args = a.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([args.python, "app.py", "--model", "default", "--port", str(port)], cwd=args.repo,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {"settings": {"visitors": args.visitors, "keep_open": args.keep_open, "repo": args.repo,
                           "commit": subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True).stdout.strip(),
                           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                           "model": "default (SmolLM2-135M-Instruct, float32)"},
              "visitors": []}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            t0 = time.monotonic()
            open_tabs = []
            for i in range(args.visitors):
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                for _ in range(120):  # the server may still be loading the model
                    try:
                        page.goto(f"http://127.0.0.1:{port}/", timeout=10_000)
                        break
                    except Exception:  # noqa: BLE001 - not up yet
                        time.sleep(1)
                wait_status(page, "Ready|⚠️", 300_000)
                page.click("#step-btn")
                status = wait_status(page, "Step 1 done|⚠️", 600_000)
                if args.keep_open:
                    open_tabs.append(ctx)
                else:
                    ctx.close()
                    time.sleep(args.settle)
                mem = memory_of(server.pid)
                row = {"visitor": i + 1, "seconds": round(time.monotonic() - t0, 1), "status": status[:160], **mem}
                result["visitors"].append(row)
                print(f"visitor {i + 1}: {status[:60]!r} rss {mem['rss_bytes'] / 2**30:.2f} GiB, "
                      f"peak {mem['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
                Path(args.out).write_text(json.dumps(result, indent=1))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
