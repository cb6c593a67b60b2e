"""Many visitors on one studio process (a Hugging Face Space): sessions share the startup model until they change
it, the number of private copies is bounded, and closed or idle sessions give their memory back."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from pruner.model.structure import count_parameters
from studio import SessionError, StudioSession, StudioSettings
from studio.pool import SessionPool
from tests.test_session import tiny_model, tiny_settings, tiny_tokenizer


def visitors(n: int, pool: SessionPool, original=None):
    original = original or tiny_model()
    out = []
    for i in range(n):
        s = StudioSession.from_shared(original, tiny_tokenizer(), name="tiny", settings=tiny_settings())
        pool.add(f"tab{i}", s)
        out.append(s)
    return original, out


def test_a_session_shares_the_startup_model_until_it_changes_it():
    pool = SessionPool(max_private=4)
    original, (s,) = visitors(1, pool)
    p0 = count_parameters(original)["total"]
    s.schedule.measure()
    s.schedule.preview()
    s.quality.quick_eval("The")
    assert s.model is original and not s.work.private and pool.stats()["private_copies"] == 0
    rec = s.schedule.step()
    assert s.work.private and s.model is not original and rec.params_total < p0
    assert count_parameters(original)["total"] == p0  # the shared model is never cut
    s.reset()
    assert s.model is original and not s.work.private  # reset frees the copy


def test_the_studio_says_it_is_full_instead_of_running_out_of_memory():
    pool = SessionPool(max_private=1)
    original, (a, b) = visitors(2, pool)
    a.schedule.step()
    with pytest.raises(SessionError, match="studio is full"):
        b.schedule.step()
    assert b.model is original and b.steps_taken == 0 and not b.busy  # nothing changed, nothing held
    b.schedule.measure()  # read-only work still runs
    pool.release("tab0")
    b.schedule.step()
    assert b.work.private


def test_closed_and_idle_sessions_free_their_models():
    pool = SessionPool(max_private=4, idle_seconds=60)
    _, (a, b, c) = visitors(3, pool)
    for s in (a, b, c):
        s.schedule.step()
    copies = [weakref.ref(s.model) for s in (a, b, c)]
    pool.release("tab0")  # a's tab closed
    b.work.last_used = time.monotonic() - 61  # b idle for a minute
    assert pool.sweep() == 1
    gc.collect()
    assert copies[0]() is None and copies[1]() is None and copies[2]() is not None
    assert pool.stats() == {"sessions": 1, "private_copies": 1, "max_private": 4, "idle_seconds": 60}
    with pytest.raises(SessionError, match="idle for more than 1 minutes"):
        b.schedule.step()
    with pytest.raises(SessionError, match="tab was closed"):
        a.schedule.measure()


def test_a_notebook_session_owns_its_model():
    model = tiny_model()
    s = StudioSession(model, tiny_tokenizer(), settings=StudioSettings.build(prune=dict(n_windows=4, window=32, target=0.85, step=0.05)))
    assert s.work.private and s.original is not model
    s.schedule.step()
    s.reset()
    assert s.work.private and s.model is not s.original  # a fresh copy, the original stays pristine


# ---------------------------------------------------------------- the same in a real browser, several tabs


@pytest.mark.browser
def test_browser_tabs_get_their_memory_back_when_closed():
    from pathlib import Path

    from tests.test_app_e2e import ARGS, CHROMIUM, free_port, wait_status

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: run scripts/setup.sh --browser")
    from playwright.sync_api import sync_playwright

    from studio.ui import CSS, build_demo

    pool = SessionPool(max_private=2)
    demo = build_demo(tiny_model(), tiny_tokenizer(), source="tiny", pool=pool)
    port = free_port()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=CSS)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            tabs = []
            for _ in range(3):
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                wait_status(page, "Ready")
                tabs.append((ctx, page))
            assert pool.stats()["sessions"] == 3 and pool.stats()["private_copies"] == 0  # nobody copied yet
            for _, page in tabs[:2]:
                page.click("#step-btn")
                wait_status(page, "Step 1 done", timeout=120_000)
            assert pool.stats()["private_copies"] == 2
            copies = [weakref.ref(s.model) for s in list(pool._sessions.values()) if s.work.private]
            tabs[2][1].click("#step-btn")
            wait_status(tabs[2][1], "studio is full", timeout=60_000)
            for ctx, _ in tabs[:2]:
                ctx.close()  # the visitors leave: Gradio's unload frees their sessions
            deadline = time.monotonic() + 60
            while pool.stats()["sessions"] > 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            gc.collect()
            assert pool.stats() == {**pool.stats(), "sessions": 1, "private_copies": 0}
            assert all(ref() is None for ref in copies)  # the copies' memory is returned
            tabs[2][1].click("#step-btn")  # now there is room
            wait_status(tabs[2][1], "Step 1 done", timeout=120_000)
            browser.close()
    finally:
        demo.close()
