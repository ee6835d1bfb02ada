"""Google Colab, for the notebooks that train or read runs (06, 07 and 08): a Colab runtime disconnects when idle and
its disk is wiped with it, so a run folder kept on Google Drive is what lets `--resume` (TrainConfig(resume=True))
continue."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .basics import ShakeGPTError

COLAB_DRIVE = Path("/content/drive")  # where Colab mounts Google Drive


def on_colab() -> bool:
    """Whether this Python runs in a Google Colab runtime."""
    return "google.colab" in sys.modules


def keep_runs_on_drive(
    *folders: str | Path, drive_folder: str = "shakegpt", mount_point: Path = COLAB_DRIVE
) -> list[Path]:
    """On Colab, mount Google Drive (Colab asks you to allow it) and make each run folder, such as
    ../runs/shakespeare, a link to a folder of the same name under MyDrive/<drive_folder>/runs: checkpoints then
    outlive a disconnect, and after one, the same call in a fresh runtime links the folder again, so a run with
    resume=True continues. Files the folder already held here move to Drive first. Elsewhere nothing changes.
    Returns where each folder's files live."""
    if not on_colab():
        print("not on Google Colab: run folders stay on this machine")
        return [Path(folder) for folder in folders]
    from google.colab import drive

    drive.mount(str(mount_point))
    runs = mount_point / "MyDrive" / drive_folder / "runs"
    kept = []
    for folder in map(Path, folders):
        target = runs / folder.name
        target.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink():
            folder.unlink()
        elif folder.is_dir():
            both = sorted(item.name for item in folder.iterdir() if (target / item.name).exists())
            if both:
                raise ShakeGPTError(
                    f"{folder} and {target} on Google Drive both hold {', '.join(both)}: delete or rename one of "
                    "each, then run this again."
                )
            for item in folder.iterdir():
                shutil.move(str(item), str(target / item.name))
            folder.rmdir()
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.symlink_to(target, target_is_directory=True)
        print(f"{folder} -> Google Drive: {target}")
        kept.append(target)
    return kept
