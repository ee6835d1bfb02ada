"""Data, taught in notebook 01: the Shakespeare corpora (pinned downloads) or your own text file, a token cache, the
split, the training batch loader and the validation windows."""

from __future__ import annotations

import gzip
import http.client
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .basics import PROJECT_ROOT, ShakeGPTError, check_choice, setting
from .files import sha256_of, write_atomically
from .tokenizer import get_tokenizer


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where corpora and token caches are kept: `cache_dir` if given, else $SHAKEGPT_CACHE_DIR, else data/."""
    return Path(cache_dir or os.environ.get("SHAKEGPT_CACHE_DIR") or PROJECT_ROOT / "data")


VAL_FRACTION = 0.1  # the last 10% of the tokens is held out for validation


def strip_gutenberg(text: str) -> str:
    """The Complete Works without Project Gutenberg's header, licence footer and the World Library notice blocks."""
    text = text.removeprefix("\ufeff")
    start = re.search(r"^\*\*\* ?START OF TH(IS|E) PROJECT GUTENBERG EBOOK.*$", text, flags=re.M)
    end = re.search(r"^End of (the )?Project Gutenberg'?s? ", text, flags=re.M | re.I)
    if start is None or end is None:
        raise ShakeGPTError("the complete works do not have Gutenberg's START and END markers where expected.")
    body = text[start.end() : end.start()]
    # This edition opens with World Library's notes and its "Small Print!" licence, which ends with a version line;
    # Shakespeare's text (the Sonnets) starts after it.
    small_print_end = re.search(r'^\["Small Print" V\.[\d.]+\]$', body, flags=re.M)
    if small_print_end is not None:
        body = body[small_print_end.end() :]
    body = re.sub(r"<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS.*?>>\n?", "", body, flags=re.S)
    return body.strip() + "\n"


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and how to check it: the file name, its sha256, a download address."""

    filename: str
    sha256: str
    url: str
    download_sha256: str  # of the bytes at `url` (gzipped for the complete works)
    clean: Callable[[str], str]


CORPORA: dict[str, Corpus] = {
    "tinyshakespeare": Corpus(
        filename="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        download_sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        clean=lambda text: text,
    ),
    "complete": Corpus(
        filename="shakespeare_complete.txt",
        sha256="5886dc8d8d2d1726fc93a1b014ff7db691707d5a2ccb8b8888d87037dccc8982",
        url="https://raw.githubusercontent.com/riccardomurri/pyspark-intro-course/master/data/shakespeare.txt.gz",
        download_sha256="9e2c1aea328d1819029086808cb3c56af7a0645f37adb3c957d0a0248ad3b7e6",
        clean=strip_gutenberg,
    ),
}


def get_corpus(name: str) -> Corpus:
    check_choice("corpus", name, CORPORA)
    return CORPORA[name]


def download_corpus(corpus: Corpus, dest: Path, timeout: float = 60.0) -> bytes:
    """Fetch the corpus, check both hashes (of what was served and of the text), then save it at `dest`."""
    try:
        with urllib.request.urlopen(corpus.url, timeout=timeout) as response:
            data = response.read()
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError; a reply cut short is neither
        raise ShakeGPTError(
            f"could not download {corpus.filename} from {corpus.url} ({error}). Offline? Put the file in "
            f"{dest.parent}/ or set SHAKEGPT_DATA_DIR to a folder that holds it."
        ) from error
    if sha256_of(data) != corpus.download_sha256:
        raise ShakeGPTError(f"{corpus.url} served bytes with the wrong sha256; nothing was saved.")
    if corpus.url.endswith(".gz"):
        data = gzip.decompress(data)
    if sha256_of(data) != corpus.sha256:
        raise ShakeGPTError(f"{corpus.url} unpacked to the wrong sha256; nothing was saved.")
    write_atomically(dest, lambda f: f.write(data))
    return data


def read_verified(path: Path, corpus: Corpus) -> bytes:
    data = path.read_bytes()
    if sha256_of(data) != corpus.sha256:
        raise ShakeGPTError(
            f"{path} has sha256 {sha256_of(data)}, expected {corpus.sha256}: it is not the pinned {corpus.filename}. "
            "Delete or replace it."
        )
    return data


def load_corpus(name: str = "tinyshakespeare", cache_dir: str | Path | None = None) -> str:
    """The text of corpus `name`, cleaned: from the cache folder (see cache_folder), else from $SHAKEGPT_DATA_DIR, else
    downloaded into the cache. Its sha256 is checked every time."""
    corpus = get_corpus(name)
    cached = cache_folder(cache_dir) / corpus.filename
    user_dir = os.environ.get("SHAKEGPT_DATA_DIR")
    if cached.is_file():
        data = read_verified(cached, corpus)
    elif user_dir and (Path(user_dir) / corpus.filename).is_file():
        data = read_verified(Path(user_dir) / corpus.filename, corpus)
    else:
        data = download_corpus(corpus, cached)
    return corpus.clean(data.decode("utf-8"))


def read_text_file(path: str | Path) -> str:
    """Your own text to train on: a UTF-8 file (a byte-order mark is dropped), refused in one sentence when it cannot
    be read, is empty or is not UTF-8."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ShakeGPTError(f"cannot read {setting('text_file')} {path}: {error.strerror or error}.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ShakeGPTError(
            f"{path} is not UTF-8 text (byte {error.start:,} is not valid UTF-8); save it as UTF-8 and try again."
        ) from None
    if not text:
        raise ShakeGPTError(f"{path} is empty: there is no text in it to train on.")
    return text


def text_name(corpus: str, text_file: str | Path | None = None) -> str:
    """What a run trains on, as its messages and model card name it: the text file's name, else the corpus."""
    return Path(text_file).name if text_file else corpus


def load_tokens(
    name: str = "tinyshakespeare", cache_dir: str | Path | None = None, text_file: str | Path | None = None
) -> np.ndarray:
    """Corpus `name`, or your UTF-8 `text_file` when given, as GPT-2 tokens (uint16): encoded once and cached in the
    cache folder under the text's hash, so an edited file is encoded again."""
    text = read_text_file(text_file) if text_file else load_corpus(name, cache_dir)
    digest = sha256_of(text.encode())[:16]
    path = cache_folder(cache_dir) / f"{'text' if text_file else name}-gpt2-{digest}.u16"
    if path.is_file():
        return np.fromfile(path, dtype=np.uint16)
    tokens = np.array(get_tokenizer().encode_ordinary(text), dtype=np.uint16)
    write_atomically(path, lambda f: f.write(tokens.tobytes()))
    return tokens


def split_tokens(tokens: np.ndarray, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the first 90% of tokens train, the last 10% validate (no shuffling across the cut)."""
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


class TokenBatches:
    """(x, y) batches of shape (batch_size, seq_len), y being x shifted by one token.

    The token stream is cut into non-overlapping windows. Each epoch visits every window once, in an order (and
    from a start offset) drawn from (seed, epoch) when `shuffle` is on. Every step consumes batch_size windows per
    process: process `rank` of `world_size` takes its own slice, so processes never see the same window. The state
    is two integers (epoch, position), which a checkpoint saves to resume exactly.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.position = 0, 0
        windows = self.windows_per_epoch(offset=seq_len - 1)
        if windows < batch_size * world_size:
            fits = f"--batch-size {windows // world_size} at most" if windows >= world_size else "a smaller --seq-len"
            raise ShakeGPTError(
                f"{len(tokens):,} tokens hold {windows} windows of {seq_len} tokens, fewer than the {batch_size} x "
                f"{world_size} process(es) sequences of one step ({setting('batch_size')}); use {fits}."
            )
        self._start_epoch()

    def windows_per_epoch(self, offset: int) -> int:
        return (len(self.tokens) - 1 - offset) // self.seq_len

    def steps_per_epoch(self) -> int:
        return self.windows_per_epoch(self.seq_len - 1) // (self.batch_size * self.world_size)

    def _start_epoch(self) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.offset = int(torch.randint(self.seq_len, (1,), generator=generator)) if self.shuffle else 0
        n = self.windows_per_epoch(self.offset)
        self.order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        per_step = self.batch_size * self.world_size
        if self.position + per_step > len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
        mine = self.order[self.position + self.rank * self.batch_size :][: self.batch_size]
        self.position += per_step
        starts = self.offset + mine * self.seq_len
        rows = starts[:, None] + torch.arange(self.seq_len)
        # Gathered separately, x and y are contiguous: pinning them for a GPU copy needs no extra copy first.
        return self.tokens[rows], self.tokens[rows + 1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._start_epoch()


def evaluation_windows(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    n_windows: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches over the first `n_windows` non-overlapping windows of `tokens` (all of them when None or more
    than there are), the same ones every time. Process `rank` of `world_size` takes every world_size-th window, so
    any batch size and process count work: the last batch may be smaller, and a process may get no window at all."""
    available = (len(tokens) - 1) // seq_len
    mine = range(rank, min(available, n_windows or available), world_size)
    for first in range(0, len(mine), batch_size):
        starts = mine[first : first + batch_size]
        window = np.stack([tokens[i * seq_len : (i + 1) * seq_len + 1] for i in starts])
        window = torch.from_numpy(window.astype(np.int64))
        yield window[:, :-1], window[:, 1:]


def fixed_batches(vocab: int, batch_size: int, seq_len: int, seed: int) -> TokenBatches:
    """Batches cut from one seeded stream of random tokens: no corpus needed, and every rung sees the same data."""
    generator = np.random.default_rng(seed)
    tokens = generator.integers(0, vocab, size=batch_size * (seq_len + 1) * 4, dtype=np.int64)
    return TokenBatches(tokens.astype(np.uint16), batch_size, seq_len, shuffle=False)
