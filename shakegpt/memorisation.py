"""Memorisation, taught in notebook 07: how much of a generated text is copied verbatim from the training text (the
longest copied span, the share of 8-grams found there), measured exactly, with the validation text as a control."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

from .data import load_tokens, split_tokens
from .tokenizer import get_tokenizer

TokenIds = np.ndarray | Sequence[int]

# Padding values, none of them a token id: past the corpus's end, the corpus reads CORPUS_END; a query ends with
# QUERY_END, below every token (a prefix sorts first), or with AFTER_EVERY_TOKEN to land after all its extensions.
CORPUS_END = -1
QUERY_END = -2
AFTER_EVERY_TOKEN = np.iinfo(np.int64).max
FIRST_BLOCK = 16  # tokens compared at once, doubled until a difference shows up


def as_token_ids(tokens: TokenIds) -> np.ndarray:
    """`tokens` as a 1-D int64 array, refusing anything that is not a sequence of non-negative integers."""
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"token ids must form a 1-D sequence, not an array of shape {array.shape}.")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"token ids must be integers, not {array.dtype}.")
    ids = array.astype(np.int64)
    if ids.min() < 0:
        raise ValueError("token ids must be non-negative.")
    return ids


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """The start positions of all suffixes of `tokens` in sorted order (a suffix that ends sorts first).

    Prefix doubling: suffixes ranked by their first k tokens are re-ranked by their first 2k tokens by sorting the
    pairs (rank of the first k, rank of the next k); ranks are final once all of them differ."""
    n = len(tokens)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.unique(tokens, return_inverse=True)[1].astype(np.int64).reshape(-1)
    shift = 1
    while True:
        next_rank = np.full(n, -1, dtype=np.int64)
        next_rank[: max(n - shift, 0)] = rank[shift:]
        pair_key = rank * (n + 1) + next_rank + 1  # both parts below n + 1, so the key orders pairs exactly
        order = np.argsort(pair_key)
        sorted_key = pair_key[order]
        sorted_rank = np.concatenate(([0], np.cumsum(sorted_key[1:] != sorted_key[:-1])))
        if sorted_rank[-1] == n - 1:
            return order.astype(np.int64)
        rank[order] = sorted_rank
        shift *= 2


@dataclass(frozen=True)
class Span:
    """A run of `length` query tokens from `query_start` that appears verbatim in the corpus, `occurrences` times,
    first at `corpus_start` (None, with no occurrence, when no query token is in the corpus)."""

    length: int
    query_start: int
    corpus_start: int | None
    occurrences: int


class CorpusIndex:
    """A suffix array over a corpus's token ids, answering exactly (no hashing) which runs of a query appear in it.

    All query positions are looked up together: a vectorised binary search finds where each query suffix would sort
    among the corpus suffixes, and its two neighbours there share the longest prefix with it that the corpus holds."""

    def __init__(self, tokens: TokenIds):
        self.tokens = as_token_ids(tokens)
        self.suffixes = suffix_array(self.tokens)
        self._padded = np.append(self.tokens, CORPUS_END)

    def __len__(self) -> int:
        return len(self.tokens)

    def match_lengths(self, tokens: TokenIds) -> np.ndarray:
        """For every query position i, the length of the longest prefix of tokens[i:] found in the corpus (the
        query's matching statistics); both measures below read off it."""
        query = as_token_ids(tokens)
        padded, starts = np.append(query, QUERY_END), np.arange(len(query))
        sorted_at = self._sorted_positions(padded, starts)
        lengths = np.zeros(len(query), dtype=np.int64)
        for neighbour in (sorted_at - 1, sorted_at):
            inside = (neighbour >= 0) & (neighbour < len(self))
            shared, _, _ = self._first_difference(padded, starts[inside], self.suffixes[neighbour[inside]])
            lengths[inside] = np.maximum(lengths[inside], shared)
        return lengths

    def occurrences(self, tokens: TokenIds) -> np.ndarray:
        """The sorted corpus positions where `tokens` appears as a contiguous run."""
        pattern = as_token_ids(tokens)
        first = self._sorted_positions(np.append(pattern, QUERY_END), np.zeros(1, dtype=np.int64))[0]
        end = self._sorted_positions(np.append(pattern, AFTER_EVERY_TOKEN), np.zeros(1, dtype=np.int64))[0]
        return np.sort(self.suffixes[first:end])

    def longest_verbatim_span(self, tokens: TokenIds) -> Span:
        """The longest contiguous run of `tokens` that appears verbatim in the corpus (the first one in the query
        when several are as long); length 0 when no query token appears in the corpus."""
        query = as_token_ids(tokens)
        lengths = self.match_lengths(query)
        if lengths.size == 0 or lengths.max() == 0:
            return Span(length=0, query_start=0, corpus_start=None, occurrences=0)
        start = int(lengths.argmax())
        found_at = self.occurrences(query[start : start + lengths[start]])
        return Span(int(lengths[start]), start, int(found_at[0]), len(found_at))

    def ngram_overlap(self, tokens: TokenIds, n: int = 8) -> float:
        """The share of the query's n-grams (all len - n + 1 of them, counted by position) that appear somewhere in
        the corpus: 1.0 for a fully copied text; 0.0 for a query shorter than n, which has no n-gram."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}.")
        lengths = self.match_lengths(tokens)
        if len(lengths) < n:
            return 0.0
        return float(np.mean(lengths[: len(lengths) - n + 1] >= n))

    def _sorted_positions(self, padded_query: np.ndarray, query_starts: np.ndarray) -> np.ndarray:
        """For each start, how many corpus suffixes sort before padded_query[start:]: one binary search per start,
        all of them stepped together."""
        low = np.zeros(len(query_starts), dtype=np.int64)
        high = np.full(len(query_starts), len(self), dtype=np.int64)
        while (searching := np.flatnonzero(low < high)).size:
            middle = (low[searching] + high[searching]) // 2
            _, query_token, corpus_token = self._first_difference(
                padded_query, query_starts[searching], self.suffixes[middle]
            )
            before = query_token < corpus_token
            high[searching[before]] = middle[before]
            low[searching[~before]] = middle[~before] + 1
        return low

    def _first_difference(
        self, padded_query: np.ndarray, query_starts: np.ndarray, corpus_starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each pair of starts, how many tokens padded_query and the corpus share from there, and the two tokens
        that differ next. Blocks of tokens double in width, so a short match (the usual case) costs one block.
        The padding guarantees a difference: a query ends with a value that no corpus position holds."""
        shared = np.zeros(len(query_starts), dtype=np.int64)
        pending = np.arange(len(query_starts))
        width = FIRST_BLOCK
        while pending.size:
            offsets = shared[pending, None] + np.arange(width)
            query_block = self._read(padded_query, query_starts[pending, None] + offsets)
            corpus_block = self._read(self._padded, corpus_starts[pending, None] + offsets)
            differs = query_block != corpus_block
            found = differs.any(axis=1)
            shared[pending] += np.where(found, differs.argmax(axis=1), width)
            pending, width = pending[~found], width * 2
        query_token = self._read(padded_query, query_starts + shared)
        corpus_token = self._read(self._padded, corpus_starts + shared)
        return shared, query_token, corpus_token

    @staticmethod
    def _read(padded: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """padded[positions], reading its last value (the padding) past its end."""
        return padded[np.minimum(positions, len(padded) - 1)]


def memorisation_report(
    text: str, index: CorpusIndex, tokenizer: tiktoken.Encoding | None = None, n: int = 8
) -> dict[str, object]:
    """How much of `text` (GPT-2 tokens) is in the indexed corpus: the longest verbatim span in tokens, in characters
    and as text, where it first occurs and how often, and the share of the text's n-grams found in the corpus."""
    tokenizer = tokenizer or get_tokenizer()
    tokens = tokenizer.encode_ordinary(text)
    span = index.longest_verbatim_span(tokens)
    span_text = tokenizer.decode(tokens[span.query_start : span.query_start + span.length])
    return {
        "tokens": len(tokens),
        "longest_span_tokens": span.length,
        "longest_span_chars": len(span_text),
        "longest_span_text": span_text,
        "longest_span_corpus_start": span.corpus_start,
        "longest_span_occurrences": span.occurrences,
        "n": n,
        "ngram_overlap": index.ngram_overlap(tokens, n),
    }


def corpus_indexes(
    corpus: str = "tinyshakespeare", cache_dir: str | Path | None = None, text_file: str | Path | None = None
) -> tuple[CorpusIndex, CorpusIndex]:
    """Indexes of the training and validation tokens (the course's 90/10 split) of a corpus, or of the text file a
    run trained on instead, built once per process: a generated text is compared with the training text and, as a
    control, with text the model never saw."""
    folder, text = (Path(path) if path else None for path in (cache_dir, text_file))
    return cached_indexes(corpus, folder, text)  # keyed on the values, however a caller spells them


@functools.cache
def cached_indexes(corpus: str, cache_dir: Path | None, text_file: Path | None) -> tuple[CorpusIndex, CorpusIndex]:
    """What corpus_indexes returns, one entry per corpus, cache folder and text file (`cache_clear` empties it)."""
    train, validation = split_tokens(load_tokens(corpus, cache_dir, text_file))
    return CorpusIndex(train), CorpusIndex(validation)


def memorisation_line(text: str, corpus: str = "tinyshakespeare", text_file: str | Path | None = None) -> str:
    """One line for a generated text: its longest verbatim span and n-gram overlap with the training text, and the
    same against the validation text as a control (a model that learned Shakespeare scores alike on both; one that
    memorised scores far higher on the text it trained on)."""
    train_index, validation_index = corpus_indexes(corpus, text_file=text_file)
    train, control = memorisation_report(text, train_index), memorisation_report(text, validation_index)
    return (
        f"longest span copied from the training text: {train['longest_span_tokens']} tokens "
        f"({train['longest_span_chars']} characters), {train['n']}-grams found there: {train['ngram_overlap']:.0%} | "
        f"validation text (never trained on): {control['longest_span_tokens']} tokens, {control['ngram_overlap']:.0%}"
    )
