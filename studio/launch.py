"""Start the studio: ``python app.py`` / ``python -m studio [--model default] [--host 127.0.0.1] [--port 7860]``."""

from __future__ import annotations

import argparse
import logging
import os

from pruner import PrunerError, load_model

from .pool import IDLE_SECONDS, MAX_PRIVATE, SessionPool

log = logging.getLogger("studio")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Adapt-Pruner Studio (Gradio)")
    p.add_argument("--model", default=os.environ.get("STUDIO_MODEL", "default"),
                   help="startup model: 'default', a folder, a .gguf file or a hub id")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--max-sessions", type=int, default=int(os.environ.get("STUDIO_MAX_SESSIONS", MAX_PRIVATE)),
                   help="visitors who may hold their own pruned copy of the model at once")
    p.add_argument("--idle-minutes", type=float, default=float(os.environ.get("STUDIO_IDLE_MINUTES",
                                                                            IDLE_SECONDS / 60)),
                   help="free a visitor's models after this long without a click")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from .ui import CSS, build_demo

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model = tok = error = None
    try:
        model, tok = load_model(args.model, progress=log.info)
    except PrunerError as exc:  # start anyway: the page says why and offers "Load model"
        error = str(exc)
        log.error("the startup model could not be loaded: %s", error)
    pool = SessionPool(max_private=args.max_sessions, idle_seconds=args.idle_minutes * 60)
    demo = build_demo(model, tok, source=args.model, pool=pool, load_error=error)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, show_error=False)
