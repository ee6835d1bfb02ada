"""Memorisation: the suffix-array index against a brute-force search (every query run tried at every corpus position)
on small random and hand-made token streams, then on tiny Shakespeare's real train/validation split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shakegpt.memorisation import CorpusIndex, Span, corpus_indexes, memorisation_report, suffix_array
from shakegpt.tokenizer import get_tokenizer


def brute_positions(corpus: list[int], run: list[int]) -> list[int]:
    """Every corpus position where `run` starts, by comparing it at each one."""
    return [p for p in range(len(corpus) - len(run) + 1) if corpus[p : p + len(run)] == run]


def brute_longest_span(corpus: list[int], query: list[int]) -> Span:
    """Try every run of the query, longest first and leftmost first, until one is somewhere in the corpus."""
    for length in range(len(query), 0, -1):
        for start in range(len(query) - length + 1):
            positions = brute_positions(corpus, query[start : start + length])
            if positions:
                return Span(length, start, positions[0], len(positions))
    return Span(0, 0, None, 0)


def brute_match_lengths(corpus: list[int], query: list[int]) -> list[int]:
    """For each query position, the longest run starting there that is in the corpus, grown one token at a time."""
    lengths = []
    for start in range(len(query)):
        length = 0
        while start + length < len(query) and brute_positions(corpus, query[start : start + length + 1]):
            length += 1
        lengths.append(length)
    return lengths


def brute_ngram_overlap(corpus: list[int], query: list[int], n: int) -> float:
    ngrams = [query[i : i + n] for i in range(len(query) - n + 1)]
    return sum(bool(brute_positions(corpus, g)) for g in ngrams) / len(ngrams) if ngrams else 0.0


def assert_matches_brute_force(corpus: list[int], query: list[int]) -> None:
    index = CorpusIndex(np.array(corpus, dtype=np.uint16))
    assert index.longest_verbatim_span(query) == brute_longest_span(corpus, query)
    assert index.match_lengths(query).tolist() == brute_match_lengths(corpus, query)
    for n in (1, 3, 8):
        assert index.ngram_overlap(query, n) == pytest.approx(brute_ngram_overlap(corpus, query, n), abs=1e-12)


def spliced_query(rng: np.random.Generator, corpus: list[int], alphabet: int) -> list[int]:
    """Corpus slices of random lengths with random tokens between them: long matches that end at known places."""
    query: list[int] = []
    for _ in range(4):
        start = int(rng.integers(len(corpus)))
        query += corpus[start : start + int(rng.integers(1, 20))]
        query += rng.integers(alphabet, size=int(rng.integers(0, 3))).tolist()
    return query


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("alphabet", [2, 4, 9])
def test_random_streams_match_brute_force(seed: int, alphabet: int) -> None:
    rng = np.random.default_rng(seed * 100 + alphabet)
    corpus = rng.integers(alphabet, size=int(rng.integers(200, 400))).tolist()
    assert_matches_brute_force(corpus, rng.integers(alphabet, size=40).tolist())
    assert_matches_brute_force(corpus, spliced_query(rng, corpus, alphabet))


@pytest.mark.parametrize("seed", range(4))
def test_suffix_array_and_occurrences_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corpus = rng.integers(3, size=300).tolist()
    index = CorpusIndex(corpus)
    assert index.suffixes.tolist() == sorted(range(len(corpus)), key=lambda p: corpus[p:])
    for length in (1, 2, 5, 9):
        start = int(rng.integers(len(corpus) - length))
        for run in (corpus[start : start + length], rng.integers(3, size=length).tolist()):
            assert index.occurrences(run).tolist() == brute_positions(corpus, run)


def test_query_equal_to_a_corpus_slice_is_found_whole() -> None:
    corpus = np.random.default_rng(0).integers(5, size=300).tolist()
    query = corpus[120:170]
    span = CorpusIndex(corpus).longest_verbatim_span(query)
    assert (span.length, span.query_start) == (50, 0)
    assert 120 in CorpusIndex(corpus).occurrences(query)
    assert CorpusIndex(corpus).ngram_overlap(query) == 1.0
    assert_matches_brute_force(corpus, query)


def test_query_with_no_corpus_token_matches_nothing() -> None:
    index = CorpusIndex([0, 1, 2, 3] * 20)
    query = [10, 11, 12, 10, 11, 12, 10, 11, 12, 13]
    assert index.longest_verbatim_span(query) == Span(0, 0, None, 0)
    assert index.match_lengths(query).tolist() == [0] * len(query)
    assert index.ngram_overlap(query) == 0.0
    assert index.occurrences([10]).size == 0


def test_query_shorter_than_n_has_no_overlap() -> None:
    index = CorpusIndex(list(range(20)))
    assert index.ngram_overlap([3, 4, 5], n=8) == 0.0
    assert index.ngram_overlap([3, 4, 5], n=3) == 1.0
    assert index.longest_verbatim_span([3, 4, 5]) == Span(3, 0, 3, 1)
    assert index.longest_verbatim_span([]) == Span(0, 0, None, 0)
    assert index.ngram_overlap([]) == 0.0


def test_spans_at_the_corpus_start_and_end() -> None:
    corpus = list(range(30))
    index = CorpusIndex(corpus)
    assert index.longest_verbatim_span([99, 0, 1, 2, 3, 99]) == Span(4, 1, 0, 1)
    assert index.longest_verbatim_span([99, 26, 27, 28, 29, 99]) == Span(4, 1, 26, 1)
    assert index.longest_verbatim_span([27, 28, 29, 30, 31]) == Span(3, 0, 27, 1)
    assert index.longest_verbatim_span(corpus) == Span(30, 0, 0, 1)


def test_repeated_tokens() -> None:
    corpus = [1] * 10 + [2] + [1] * 3
    index = CorpusIndex(corpus)
    assert index.longest_verbatim_span([1] * 12) == Span(10, 0, 0, 1)
    assert index.longest_verbatim_span([1] * 3) == Span(3, 0, 0, 9)
    assert index.longest_verbatim_span([2, 1, 1, 1, 1]) == Span(4, 0, 10, 1)
    for query in ([1] * 12, [1, 1, 2, 1, 1, 1, 1, 2], [2, 2, 1, 2]):
        assert_matches_brute_force(corpus, query)
    assert_matches_brute_force([7] * 64, [7] * 70)


def test_tiny_and_empty_corpora() -> None:
    assert CorpusIndex([]).longest_verbatim_span([1, 2]) == Span(0, 0, None, 0)
    assert CorpusIndex([]).ngram_overlap([1, 2], n=1) == 0.0
    assert CorpusIndex([5]).longest_verbatim_span([4, 5, 5]) == Span(1, 1, 0, 1)
    assert suffix_array(np.array([], dtype=np.int64)).size == 0


def test_inputs_of_any_integer_type_agree() -> None:
    corpus = np.random.default_rng(1).integers(6, size=200)
    query = corpus[50:90].copy()
    query[20] = 5 - query[20]  # one changed token splits the copy in two
    spans = {
        CorpusIndex(corpus.astype(dtype)).longest_verbatim_span(query.astype(dtype))
        for dtype in (np.uint16, np.int32, np.int64)
    }
    assert spans == {CorpusIndex(corpus.tolist()).longest_verbatim_span(query.tolist())}


@pytest.mark.parametrize("tokens", [[[1, 2], [3, 4]], [1.0, 2.0], [3, -1]])
def test_refuses_what_is_not_token_ids(tokens) -> None:
    with pytest.raises(ValueError, match="token ids"):
        CorpusIndex(tokens)
    with pytest.raises(ValueError, match="token ids"):
        CorpusIndex([1, 2, 3]).match_lengths(tokens)


def test_refuses_n_below_one() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        CorpusIndex([1, 2, 3]).ngram_overlap([1, 2], n=0)


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> tuple[CorpusIndex, CorpusIndex, str]:
    """The train and validation indexes of tiny Shakespeare (token cache in a temporary folder) and the train text."""
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    cache_dir: Path = tmp_path_factory.mktemp("cache")
    train, validation = corpus_indexes("tinyshakespeare", cache_dir)
    assert corpus_indexes("tinyshakespeare", cache_dir)[0] is train  # built once
    assert corpus_indexes("tinyshakespeare", cache_dir=str(cache_dir), text_file=None)[0] is train  # however spelled
    return train, validation, get_tokenizer().decode(train.tokens.tolist())


def test_training_slice_is_memorised_and_not_in_validation(shakespeare) -> None:
    train, validation, _ = shakespeare
    start = 123_456
    piece = train.tokens[start : start + 100]
    span = train.longest_verbatim_span(piece)
    assert (span.length, span.query_start) == (100, 0)
    assert start in train.occurrences(piece)
    assert train.ngram_overlap(piece) == 1.0
    assert validation.longest_verbatim_span(piece).length < 100
    assert validation.ngram_overlap(piece) < 1.0


def test_report_on_training_lines(shakespeare) -> None:
    train, validation, train_text = shakespeare
    # Two whole lines, without the newline after them (which the corpus merges with the blank line that follows):
    # their tokens on their own are the corpus's first tokens, so the span is all of the text.
    text = "\n".join(train_text.splitlines()[:2])
    assert text == "First Citizen:\nBefore we proceed any further, hear me speak."
    report = memorisation_report(text, train)
    assert report["longest_span_text"] == text
    assert report["longest_span_chars"] == len(text)
    assert report["longest_span_tokens"] == report["tokens"] == len(get_tokenizer().encode_ordinary(text))
    assert report["longest_span_corpus_start"] == 0
    assert report["ngram_overlap"] == 1.0
    assert memorisation_report(text, validation)["longest_span_chars"] < len(text)


def test_report_span_is_text_shared_by_query_and_corpus(shakespeare) -> None:
    train, _, train_text = shakespeare
    text = "ROMEO:\nI pray thee, gentle nurse, what says my love of the stars above the sea of Verona tonight?"
    report = memorisation_report(text, train, n=4)
    assert 0 < report["longest_span_tokens"] < report["tokens"]
    assert report["longest_span_text"] in text
    assert report["longest_span_text"] in train_text
    assert report["longest_span_chars"] == len(report["longest_span_text"])
    assert 0.0 < report["ngram_overlap"] < 1.0
    assert report["n"] == 4
