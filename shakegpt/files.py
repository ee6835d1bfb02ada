"""Files every piece writes or checks: atomic writes (corpora, token caches, checkpoints) and sha256 digests."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def sha256_of(data: bytes) -> str:
    """The hex sha256 of `data`, as the pinned hashes of corpora and tokenizer files are written."""
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a new temporary file beside `path`, then rename it: a crash (even kill -9) never leaves a
    half-written `path`, and a failed write keeps the previous one. The file gets the umask's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
