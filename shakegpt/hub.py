"""Publishing on the Hugging Face Hub: `python -m shakegpt_utils push` puts a checkpoint's exported model in a model
repository (`push_to_hub`) and `space --push` puts the Space in a Space repository (`push_space`), with
huggingface_hub and the token of HF_TOKEN or of a saved login (`hf auth login`). What is missing (the package, a
token, the network) is refused before anything is written or sent."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from .basics import ShakeGPTError, first_line
from .hf import HUB_HOST, export_checkpoint, reach_hub
from .space import build_space

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# The hardware the Space's README suggests (its `suggested_hardware` line); a new Space is created on it.
SUGGESTED_HARDWARE = re.compile(r"^suggested_hardware: *(\S+) *$", flags=re.M)


def hub_api(repo_id: str):
    """An HfApi that holds the token, once `repo_id` is a USER/NAME and the Hub can be reached; ShakeGPTError
    naming what is missing otherwise."""
    if not REPO_ID.fullmatch(repo_id):
        raise ShakeGPTError(f"--repo {repo_id!r} is not a Hub repository name: write it as USER/NAME.")
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError as error:
        raise ShakeGPTError(
            'publishing needs huggingface_hub: pip install -e ".[hub]" (or pip install huggingface_hub).'
        ) from error
    token = get_token()
    if not token:
        raise ShakeGPTError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or log in with `hf auth login`."
        )
    try:
        reach_hub()
    except OSError as error:
        raise ShakeGPTError(f"cannot reach {HUB_HOST} to publish (offline?): {first_line(error)}") from error
    return HfApi(token=token)


def push_folder(api, folder: Path, repo_id: str, repo_type: str, **create) -> str:
    """Create repository `repo_id` where it does not exist yet (with `create`'s settings), upload `folder` into it
    as one commit, and return its address."""
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **create)
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type=repo_type, commit_message="Upload from ShakeGPT"
        )
    except Exception as error:  # the Hub fails in many ways: a refused token, a name taken, a connection lost
        raise ShakeGPTError(f"could not publish {folder} to {repo_id}: {first_line(error)}") from error
    return str(url)


def push_to_hub(ckpt: str | Path, repo_id: str) -> str:
    """Publish checkpoint `ckpt` as model repository `repo_id` (USER/NAME), exported by export_hf with its model
    card, and return the repository's address. The export is written to a temporary folder, removed afterwards."""
    api = hub_api(repo_id)
    with tempfile.TemporaryDirectory(prefix="shakegpt-push-") as work:
        folder = export_checkpoint(ckpt, Path(work) / "model")
        return push_folder(api, folder, repo_id, "model")


def push_space(ckpt: str | Path, out: str | Path, repo_id: str) -> str:
    """Write the Space for `ckpt` into `out` (see build_space) and publish it as Space `repo_id`, created on the
    hardware its README suggests (ZeroGPU, the one a free account gets); return the Space's address. If the upload
    fails, the folder stays complete in `out`, to upload again."""
    api = hub_api(repo_id)
    out = build_space(ckpt, out)
    hardware = SUGGESTED_HARDWARE.search((out / "README.md").read_text(encoding="utf-8"))
    create = {"space_sdk": "gradio", "space_hardware": hardware.group(1) if hardware else None}
    return push_folder(api, out, repo_id, "space", **create)
