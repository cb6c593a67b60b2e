"""Pushing an exported folder to the Hugging Face Hub (where a token and a network exist)."""

from __future__ import annotations

import os
from pathlib import Path

from pruner.export.common import ExportError
from pruner.io.outputs import MANIFEST


def push_to_hub(folder: str | os.PathLike, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the model repository ``repo`` (created if needed); returns the repository URL.

    Raises :class:`ExportError` with a clear message when there is no token or the Hub cannot be reached; the
    export itself stays on disk either way.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    token = get_token()
    if not token:
        raise ExportError(f"not pushed to the Hub: no Hugging Face token (run `hf auth login` or set HF_TOKEN). "
                          f"The export is complete in '{folder}'.")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="Upload model exported by Adapt-Pruner Studio",
                          ignore_patterns=[MANIFEST])  # the local list of what --force may replace
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ExportError(f"not pushed to the Hub ({type(exc).__name__}: {first}); check the network and the "
                          f"token's write access. The export is complete in '{folder}'.") from exc
    return str(url)
