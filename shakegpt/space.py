"""The Hugging Face Space, self-contained: `python -m shakegpt_utils space --ckpt PATH --out DIR` (or `build_space`)
writes a folder to upload as it is. It holds the Space's README (metadata and a model card made from the checkpoint),
app.py with the ShakeGPT code it imports, requirements.txt, and the model in the transformers format, tokenizer
included (weights in model.safetensors: no pickle is served). The templates are space/README.md and
space/requirements.txt."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import string
from pathlib import Path

from .basics import PROJECT_ROOT, ShakeGPTError, repository_url
from .card import model_card
from .hf import checkpoint_to_export, new_folder, write_transformers_files
from .model import GPT

TEMPLATE_FOLDER = PROJECT_ROOT / "space"
PACKAGE_FOLDER = Path(__file__).resolve().parent
SDK_VERSION_LINE = re.compile(r"^sdk_version: .*$", flags=re.M)


def build_space(ckpt: str | Path, out: str | Path) -> Path:
    """Write the Space for checkpoint `ckpt` into `out`, a new or empty folder, and return it. It is built in a
    temporary folder beside `out` and renamed at the end, so a failure leaves nothing half-written behind."""
    out = Path(out)
    checkpoint, model = checkpoint_to_export(ckpt, out)
    readme = space_readme(checkpoint, model, Path(ckpt).name)
    with new_folder(out) as partial:
        (partial / "README.md").write_text(readme, encoding="utf-8")
        shutil.copyfile(template("requirements.txt"), partial / "requirements.txt")
        copy_code(partial)
        write_transformers_files(model, partial)
    return out


def repository_file(path: Path) -> Path:
    """`path`, a file that only a checkout of the repository has (app.py, the templates in space/)."""
    if not path.is_file():
        raise ShakeGPTError(f"{path} is missing: build the Space from a checkout of {repository_url()}.")
    return path


def template(name: str) -> Path:
    """A template file from the repository's space/ folder."""
    return repository_file(TEMPLATE_FOLDER / name)


def copy_code(folder: Path) -> None:
    """Copy app.py, shakegpt_utils.py and the shakegpt package's modules, subpackages included (no caches), into
    `folder`: the Space then imports the very code this checkout runs (shakegpt_utils imports the benchmarks too), and
    needs no repository address to install it from."""
    shutil.copyfile(repository_file(PROJECT_ROOT / "app.py"), folder / "app.py")
    shutil.copyfile(PROJECT_ROOT / "shakegpt_utils.py", folder / "shakegpt_utils.py")
    for module in sorted(PACKAGE_FOLDER.rglob("*.py")):
        copy = folder / "shakegpt" / module.relative_to(PACKAGE_FOLDER)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module, copy)


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
    card = model_card(checkpoint, model, source).rstrip()
    return string.Template(text).substitute(model_card=card).rstrip() + "\n"


def folder_size(folder: Path) -> int:
    """Bytes in all the files under `folder`: what the upload will send."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def upload_command(folder: Path) -> str:
    """The command that uploads `folder` as a Space (Hugging Face's `hf` command line, logged in)."""
    return f"hf upload YOUR_NAME/shakegpt {shlex.quote(str(folder))} . --repo-type space"
