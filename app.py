"""Adapt-Pruner Studio — the Hugging Face Space entry point (``app_file: app.py``).

    python app.py [--model default] [--host 127.0.0.1] [--port 7860]

It only builds and launches the studio; the page lives in ``studio/`` and every computation in ``pruner/``.
"""

from studio.launch import main

if __name__ == "__main__":
    main()
