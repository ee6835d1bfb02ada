"""The Hugging Face Space, self-contained: `python -m shakegpt_utils space --ckpt PATH --out DIR` (or `build_space`)
writes a folder to upload as it is. It holds the Space's README (metadata and a model card made from the checkpoint),
app.py with the ShakeGPT code it imports, requirements.txt, and the model in the transformers format (config.json and
model.safetensors: no pickle is served). The templates are space/README.md and space/requirements.txt."""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import secrets
import shlex
import shutil
import string
from pathlib import Path

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import PROJECT_ROOT, ShakeGPTError, first_line, repository_url
from .hf import export_hf
from .model import GPT

TEMPLATE_FOLDER = PROJECT_ROOT / "space"
PACKAGE_FOLDER = Path(__file__).resolve().parent
SDK_VERSION_LINE = re.compile(r"^sdk_version: .*$", flags=re.M)


def build_space(ckpt: str | Path, out: str | Path) -> Path:
    """Write the Space for checkpoint `ckpt` into `out`, a new or empty folder, and return it. It is built in a
    temporary folder beside `out` and renamed at the end, so a failure leaves nothing half-written behind."""
    out = Path(out)
    check_out(out)
    checkpoint = load_checkpoint(ckpt)
    model = model_from_checkpoint(checkpoint, "cpu", source=ckpt)
    readme = space_readme(checkpoint, model, Path(ckpt).name)
    resolved = out.resolve()  # `--out .` has no name of its own
    partial = resolved.with_name(f".{resolved.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        partial.mkdir(parents=True)
        (partial / "README.md").write_text(readme, encoding="utf-8")
        shutil.copyfile(template("requirements.txt"), partial / "requirements.txt")
        copy_code(partial)
        export_hf(model, partial)
        if out.is_dir():
            out.rmdir()  # empty (check_out said so): the finished folder takes its place
        partial.rename(out)
    except OSError as error:
        raise ShakeGPTError(f"could not write the Space to {out}: {first_line(error)}") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after the rename
    return out


def check_out(out: Path) -> None:
    """Refuse an --out that holds anything: a Space folder is uploaded whole, so stray files must not mix in."""
    if out.exists() and not out.is_dir():
        raise ShakeGPTError(f"--out {out} exists and is not a folder: choose a new or empty folder for the Space.")
    if out.is_dir() and any(out.iterdir()):
        raise ShakeGPTError(f"--out {out} exists and is not empty: choose a new or empty folder for the Space.")


def repository_file(path: Path) -> Path:
    """`path`, a file that only a checkout of the repository has (app.py, the templates in space/)."""
    if not path.is_file():
        raise ShakeGPTError(f"{path} is missing: build the Space from a checkout of {repository_url()}.")
    return path


def template(name: str) -> Path:
    """A template file from the repository's space/ folder."""
    return repository_file(TEMPLATE_FOLDER / name)


def copy_code(folder: Path) -> None:
    """Copy app.py, shakegpt_utils.py and the shakegpt package's modules (no caches) into `folder`: the Space then
    imports the very code this checkout runs, and needs no repository address to install it from."""
    shutil.copyfile(repository_file(PROJECT_ROOT / "app.py"), folder / "app.py")
    shutil.copyfile(PROJECT_ROOT / "shakegpt_utils.py", folder / "shakegpt_utils.py")
    (folder / "shakegpt").mkdir()
    for module in sorted(PACKAGE_FOLDER.glob("*.py")):
        shutil.copyfile(module, folder / "shakegpt" / module.name)


def sdk_version() -> str | None:
    """The installed Gradio's version, the one the app is tested with; None without Gradio (the template's then)."""
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        return None


def space_readme(checkpoint: dict, model: GPT, source: str) -> str:
    """The template README with sdk_version set to the installed Gradio and the model card filled in."""
    text = template("README.md").read_text(encoding="utf-8")
    version = sdk_version()
    if version is not None:
        text = SDK_VERSION_LINE.sub(f"sdk_version: {version}", text, count=1)
    return string.Template(text).substitute(model_card(checkpoint, model, source)).rstrip() + "\n"


def is_memorised(checkpoint: dict) -> bool:
    """Whether the checkpoint comes from after its run's best validation step: by then the run fitted its training
    text better while getting worse on text it never saw, that is, it was memorising."""
    best_step = run_state(checkpoint).get("best_val_step")
    return best_step is not None and checkpoint.get("step", 0) > best_step


def run_state(checkpoint: dict) -> dict:
    """The training run's state saved with the checkpoint (best validation loss and step...); empty if none."""
    return (checkpoint.get("extra") or {}).get("state") or {}


def model_card(checkpoint: dict, model: GPT, source: str) -> dict[str, str]:
    """The model card's entries, each read from the checkpoint: what the model read, its shape, its training, its
    validation loss, and a warning when it memorised."""
    cfg, state, c = checkpoint.get("train_config") or {}, run_state(checkpoint), model.config
    step, unknown = checkpoint.get("step", 0), "not recorded in the checkpoint"
    corpus = f"`{cfg['corpus']}`" if cfg.get("corpus") else unknown
    if cfg.get("train_tokens"):
        corpus += f", the first {cfg['train_tokens']:,} tokens of its training split only"
    shape = (
        f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, a context of {c.block_size} tokens, "
        f"{model.num_params() / 1e6:.1f}M parameters"
    )
    training = f"{step:,} steps"
    if cfg.get("target_loss") is not None and state.get("target_step") is not None:
        training += f"; the training loss fell below {cfg['target_loss']} at step {state['target_step']:,}"
    best_loss, best_step = state.get("best_val_loss"), state.get("best_val_step")
    validation = unknown
    if best_step is not None and best_loss is not None and math.isfinite(best_loss):
        validation = f"{best_loss:.4f}, the run's lowest, at step {best_step:,}"
    return {
        "corpus": corpus,
        "model": f"`{cfg['preset']}` preset: {shape}" if cfg.get("preset") else shape,
        "training": training,
        "validation": validation,
        "checkpoint": f"`{source}`, step {step:,}",
        "memorisation": memorisation_warning(step, best_step) if is_memorised(checkpoint) else "",
    }


def memorisation_warning(step: int, best_step: int) -> str:
    """The card's warning for a checkpoint saved after its run's best validation step."""
    return (
        f"**It memorised.** This checkpoint is from step {step:,}, after the run's best validation loss at step "
        f"{best_step:,}: from there on it learnt its training text by heart rather than Shakespeare in general, so "
        "it may quote its training text verbatim. The note under each answer says how much of it is copied."
    )


def folder_size(folder: Path) -> int:
    """Bytes in all the files under `folder`: what the upload will send."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def upload_command(folder: Path) -> str:
    """The command that uploads `folder` as a Space (Hugging Face's `hf` command line, logged in)."""
    return f"hf upload YOUR_NAME/shakegpt {shlex.quote(str(folder))} . --repo-type space"
