"""Data: the corpora read and verified (pinned sha256 from the shared folder's manifest), the Gutenberg clean-up
against a line-by-line reconstruction, real downloads from a loopback HTTP server, the token cache, the split and the
batch loader (windows, sharding across processes, exact resume)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch

import shakegpt.data
from shakegpt.basics import PROJECT_ROOT, ShakeGPTError
from shakegpt.data import (
    CORPORA,
    TokenBatches,
    cache_folder,
    evaluation_windows,
    load_corpus,
    load_tokens,
    split_tokens,
    strip_gutenberg,
)
from shakegpt.files import write_atomically
from shakegpt.tokenizer import get_tokenizer

# From ../shared/data/MANIFEST.md, which the project's code never reads.
TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
COMPLETE_SHA256 = "5886dc8d8d2d1726fc93a1b014ff7db691707d5a2ccb8b8888d87037dccc8982"
# Line numbers (1-based) in shakespeare_complete.txt: the START marker, the last line of World Library's "Small
# Print!" licence (Shakespeare's text starts after it) and the first line of Gutenberg's footer.
START_LINE, SMALL_PRINT_END_LINE, FOOTER_LINE = 22, 160, 124388


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_byte_changed(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]


def use_corpus(monkeypatch: pytest.MonkeyPatch, name: str, **changes) -> None:
    """Point the corpus table's entry `name` somewhere else (a loopback address, another pinned hash) for one test."""
    monkeypatch.setitem(CORPORA, name, dataclasses.replace(CORPORA[name], **changes))


# ---- reading and verifying -------------------------------------------------------------------------------------


def test_load_corpus_reads_the_data_folder_with_the_pinned_sha256(corpus_dir, cache_dir):
    data = (corpus_dir / "tinyshakespeare.txt").read_bytes()
    assert sha256_hex(data) == TINY_SHA256
    assert CORPORA["tinyshakespeare"].sha256 == TINY_SHA256
    assert CORPORA["complete"].sha256 == COMPLETE_SHA256
    text = load_corpus("tinyshakespeare", cache_dir)
    assert text == data.decode("utf-8")
    assert text.startswith("First Citizen:")


def test_unknown_corpus_is_refused_with_the_choices(cache_dir):
    with pytest.raises(ShakeGPTError, match="unknown corpus 'hamlet'; choose one of tinyshakespeare, complete"):
        load_corpus("hamlet", cache_dir)


def test_a_modified_copy_is_refused_every_time(corpus_dir, cache_dir, tmp_path, monkeypatch):
    good = (corpus_dir / "tinyshakespeare.txt").read_bytes()
    bad = one_byte_changed(good)
    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    (bad_folder / "tinyshakespeare.txt").write_bytes(bad)
    monkeypatch.setenv("SHAKEGPT_DATA_DIR", str(bad_folder))
    expected = rf"tinyshakespeare\.txt has sha256 {sha256_hex(bad)}, expected {TINY_SHA256}"
    with pytest.raises(ShakeGPTError, match=expected):
        load_corpus("tinyshakespeare", cache_dir)
    # A good copy in the cache folder comes first...
    (cache_dir / "tinyshakespeare.txt").write_bytes(good)
    assert load_corpus("tinyshakespeare", cache_dir) == good.decode("utf-8")
    # ...and is checked again on every load: modified after a first good read, it is refused.
    (cache_dir / "tinyshakespeare.txt").write_bytes(bad)
    with pytest.raises(ShakeGPTError, match=expected):
        load_corpus("tinyshakespeare", cache_dir)


def test_cache_folder_is_the_argument_then_the_environment_then_data(tmp_path, monkeypatch):
    monkeypatch.delenv("SHAKEGPT_CACHE_DIR", raising=False)
    assert cache_folder() == PROJECT_ROOT / "data"
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path / "env"))
    assert cache_folder() == tmp_path / "env"
    assert cache_folder(tmp_path / "arg") == tmp_path / "arg"


# ---- the complete works without Gutenberg's additions ----------------------------------------------------------


def expected_complete_works(original: str) -> str:
    """A second path to the cleaned text, line by line: the lines between the licence and the footer (numbers from
    the manifest), without the 8-line <<...>> notice blocks."""
    lines = original.splitlines(keepends=True)
    assert lines[START_LINE - 1].startswith("*** START OF THIS PROJECT GUTENBERG EBOOK")
    assert lines[SMALL_PRINT_END_LINE - 1] == '["Small Print" V.12.08.93]\n'
    assert lines[FOOTER_LINE - 1].startswith("End of the Project Gutenberg EBook")
    kept, in_notice = [], False
    for line in lines[SMALL_PRINT_END_LINE : FOOTER_LINE - 1]:
        in_notice = in_notice or line.startswith("<<THIS ELECTRONIC VERSION")
        if not in_notice:
            kept.append(line)
        in_notice = in_notice and not line.rstrip().endswith(">>")
    return "".join(kept).strip() + "\n"


def test_complete_works_are_stripped_of_header_footer_and_notices(corpus_dir, cache_dir):
    original = (corpus_dir / "shakespeare_complete.txt").read_text(encoding="utf-8")
    assert original.count("<<THIS ELECTRONIC VERSION") == 220
    text = load_corpus("complete", cache_dir)
    assert text == expected_complete_works(original)
    for gone in ("Gutenberg", "GUTENBERG", "ELECTRONIC VERSION", "WORLD LIBRARY", "Small Print", "<<", ">>", "\ufeff"):
        assert gone not in text, gone
    assert text.startswith("1609\n\nTHE SONNETS\n")
    assert text.endswith("And new pervert a reconciled maid.'\n\nTHE END\n")
    for title in ("THE TRAGEDY OF HAMLET, PRINCE OF DENMARK", "THE TRAGEDY OF ROMEO AND JULIET", "A LOVER'S COMPLAINT"):
        assert f"\n{title}\n" in text
    assert len(text) > 0.95 * len(original)


def test_strip_gutenberg_on_a_small_example():
    body = "SONNET 1\nFrom fairest creatures\n\nTHE END\n"
    notice = "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT.>>\n"
    text = (
        "\ufeffThe Project Gutenberg EBook\n*** START OF THE PROJECT GUTENBERG EBOOK 100 ***\n\n"
        f"{notice}\n{body}\n{notice}\nEnd of Project Gutenberg's Works\n*** END ***\nLicence.\n"
    )
    assert strip_gutenberg(text) == body
    with pytest.raises(ShakeGPTError, match="START and END markers"):
        strip_gutenberg(body)


# ---- downloads, for real, from 127.0.0.1 -------------------------------------------------------------------------


def test_download_verifies_and_caches_the_file(http_server, corpus_dir, cache_dir, monkeypatch):
    data = (corpus_dir / "tinyshakespeare.txt").read_bytes()
    (http_server.root / "input.txt").write_bytes(data)
    use_corpus(monkeypatch, "tinyshakespeare", url=http_server.url("input.txt"))
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    assert load_corpus("tinyshakespeare", cache_dir) == data.decode("utf-8")
    assert http_server.requests == ["/input.txt"]
    assert [p.name for p in cache_dir.iterdir()] == ["tinyshakespeare.txt"]  # no temporary file left
    assert (cache_dir / "tinyshakespeare.txt").read_bytes() == data
    load_corpus("tinyshakespeare", cache_dir)
    assert http_server.requests == ["/input.txt"]  # the second load reads the cache


def test_download_with_the_wrong_sha256_is_refused_and_leaves_nothing(http_server, corpus_dir, cache_dir, monkeypatch):
    (http_server.root / "input.txt").write_bytes(one_byte_changed((corpus_dir / "tinyshakespeare.txt").read_bytes()))
    use_corpus(monkeypatch, "tinyshakespeare", url=http_server.url("input.txt"))
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    with pytest.raises(ShakeGPTError, match=r"127\.0\.0\.1:\d+/input\.txt served bytes with the wrong sha256; nothing"):
        load_corpus("tinyshakespeare", cache_dir)
    assert http_server.requests == ["/input.txt"]
    assert list(cache_dir.iterdir()) == []


def test_gzipped_download_is_unpacked_verified_and_cleaned(http_server, corpus_dir, cache_dir, monkeypatch):
    data = (corpus_dir / "shakespeare_complete.txt").read_bytes()
    # The pinned .gz cannot be rebuilt byte for byte here, so the test pins the hash of its own gzip of the same text.
    packed = gzip.compress(data, compresslevel=1, mtime=0)
    (http_server.root / "shakespeare.txt.gz").write_bytes(packed)
    use_corpus(monkeypatch, "complete", url=http_server.url("shakespeare.txt.gz"), download_sha256=sha256_hex(packed))
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    assert load_corpus("complete", cache_dir) == expected_complete_works(data.decode("utf-8"))
    assert [p.name for p in cache_dir.iterdir()] == ["shakespeare_complete.txt"]
    assert sha256_hex((cache_dir / "shakespeare_complete.txt").read_bytes()) == COMPLETE_SHA256


def test_gzipped_download_that_unpacks_to_other_text_is_refused(http_server, cache_dir, monkeypatch):
    packed = gzip.compress(b"Not the complete works.\n", mtime=0)
    (http_server.root / "shakespeare.txt.gz").write_bytes(packed)
    use_corpus(monkeypatch, "complete", url=http_server.url("shakespeare.txt.gz"), download_sha256=sha256_hex(packed))
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    with pytest.raises(ShakeGPTError, match=r"shakespeare\.txt\.gz unpacked to the wrong sha256; nothing was saved"):
        load_corpus("complete", cache_dir)
    assert list(cache_dir.iterdir()) == []


def test_unreachable_address_says_where_to_put_the_file(closed_port, cache_dir, monkeypatch):
    url = f"http://127.0.0.1:{closed_port}/input.txt"
    use_corpus(monkeypatch, "tinyshakespeare", url=url)
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    with pytest.raises(ShakeGPTError) as error:
        load_corpus("tinyshakespeare", cache_dir)
    message = str(error.value)
    assert f"could not download tinyshakespeare.txt from {url}" in message
    assert f"Put the file in {cache_dir}/ or set SHAKEGPT_DATA_DIR to a folder that holds it." in message
    assert "\n" not in message
    assert list(cache_dir.iterdir()) == []


@pytest.mark.parametrize("served", ["missing.txt", "cut-short"])
def test_a_missing_file_or_a_dropped_connection_is_a_clear_error(http_server, cache_dir, monkeypatch, served):
    use_corpus(monkeypatch, "tinyshakespeare", url=http_server.url(served))
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    with pytest.raises(ShakeGPTError, match=rf"could not download tinyshakespeare\.txt from .*/{served} \(") as error:
        load_corpus("tinyshakespeare", cache_dir)
    assert "Put the file in" in str(error.value) and "\n" not in str(error.value)
    assert list(cache_dir.iterdir()) == []


def test_offline_with_no_copy_names_the_pinned_address(no_network, cache_dir, monkeypatch):
    monkeypatch.delenv("SHAKEGPT_DATA_DIR")
    with pytest.raises(ShakeGPTError, match=r"Offline\? Put the file in .* or set SHAKEGPT_DATA_DIR") as error:
        load_corpus("complete", cache_dir)
    assert CORPORA["complete"].url in str(error.value)
    assert list(cache_dir.iterdir()) == []


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "tokens.u16"
    write_atomically(path, lambda f: f.write(b"old"))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shakegpt.data.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        write_atomically(path, lambda f: f.write(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.u16"]
    assert path.read_bytes() == b"old"


def test_written_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "shared.u16", lambda f: f.write(b"tokens"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.u16").stat().st_mode) == 0o644  # not mkstemp's owner-only 0o600


# ---- the token cache -------------------------------------------------------------------------------------------


def forbid_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any new encoding fail, so that a successful load_tokens proves it read the cache."""

    def no_tokenizer():
        raise AssertionError("load_tokens encoded the corpus again instead of reading its cache")

    monkeypatch.setattr(shakegpt.data, "get_tokenizer", no_tokenizer)


def test_tokens_are_encoded_once_and_cached_as_uint16(corpus_dir, cache_dir, monkeypatch):
    text = (corpus_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    expected = np.array(get_tokenizer().encode_ordinary(text))
    tokens = load_tokens("tinyshakespeare", cache_dir)
    assert tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, expected)
    [cache_file] = cache_dir.glob("*.u16")
    assert cache_file.stat().st_size == 2 * len(expected)
    np.testing.assert_array_equal(np.fromfile(cache_file, dtype=np.uint16), expected)
    forbid_encoding(monkeypatch)
    np.testing.assert_array_equal(load_tokens("tinyshakespeare", cache_dir), expected)
    assert list(cache_dir.glob("*.u16")) == [cache_file]


def test_token_cache_is_rebuilt_when_the_corpus_hash_changes(cache_dir, monkeypatch):
    versions = ["To be, or not to be, that is the question.\n", "Now is the winter of our discontent.\n"]
    encoded = [get_tokenizer().encode_ordinary(text) for text in versions]
    for text, tokens in zip(versions, encoded, strict=True):  # a new release of the pinned corpus
        (cache_dir / "tinyshakespeare.txt").write_text(text)
        use_corpus(monkeypatch, "tinyshakespeare", sha256=sha256_hex(text.encode()))
        assert load_tokens("tinyshakespeare", cache_dir).tolist() == tokens
    assert len(list(cache_dir.glob("*.u16"))) == 2
    forbid_encoding(monkeypatch)  # each version's cache is still there and still read
    assert load_tokens("tinyshakespeare", cache_dir).tolist() == encoded[1]


# ---- your own text ---------------------------------------------------------------------------------------------

OWN_TEXT = "Dear diary,\nToday the naïve café served ☃-shaped cakes. 日本語 too!\n" * 3


def test_a_text_file_is_encoded_once_and_cached_under_its_texts_hash(tmp_path, cache_dir, monkeypatch):
    path = tmp_path / "diary.txt"
    path.write_bytes(b"\xef\xbb\xbf" + OWN_TEXT.encode("utf-8"))  # with the byte-order mark some editors write
    expected = get_tokenizer().encode_ordinary(OWN_TEXT)  # the mark is not part of the text
    tokens = load_tokens("complete", cache_dir, text_file=path)  # the file wins over the corpus
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    cache_file = cache_dir / f"text-gpt2-{sha256_hex(OWN_TEXT.encode())[:16]}.u16"
    assert [file.name for file in cache_dir.iterdir()] == [cache_file.name]  # no corpus read or downloaded
    assert np.fromfile(cache_file, dtype=np.uint16).tolist() == expected

    path.write_text(OWN_TEXT + "The end.\n", encoding="utf-8")  # an edited file is encoded again
    assert load_tokens(text_file=path, cache_dir=cache_dir).tolist() == get_tokenizer().encode_ordinary(
        OWN_TEXT + "The end.\n"
    )
    assert len(list(cache_dir.glob("text-gpt2-*.u16"))) == 2
    path.write_text(OWN_TEXT, encoding="utf-8")
    forbid_encoding(monkeypatch)  # the first version's cache is still there and still read
    assert load_tokens(text_file=str(path), cache_dir=cache_dir).tolist() == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read text_file / --text-file {path}: No such file or directory."),
        (b"", "{path} is empty: there is no text in it to train on."),
        (b"\xef\xbb\xbf", "{path} is empty: there is no text in it to train on."),
        (
            "Caf\u00e9 au lait\n".encode("latin-1"),
            "{path} is not UTF-8 text (byte 3 is not valid UTF-8); save it as UTF-8 and try again.",
        ),
    ],
    ids=["missing", "empty", "only-a-byte-order-mark", "latin-1"],
)
def test_a_text_file_that_cannot_be_trained_on_is_refused_in_one_sentence(tmp_path, cache_dir, content, message):
    path = tmp_path / "notes.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ShakeGPTError) as error:
        load_tokens(cache_dir=cache_dir, text_file=path)
    assert str(error.value) == message.format(path=path)
    assert list(cache_dir.iterdir()) == []


def test_a_folder_is_not_a_text_file(tmp_path, cache_dir):
    with pytest.raises(ShakeGPTError) as error:
        load_tokens(cache_dir=cache_dir, text_file=tmp_path)
    assert str(error.value) == f"cannot read text_file / --text-file {tmp_path}: Is a directory."


# ---- the split ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, n_train", [(1000, 900), (1234, 1110), (10, 9)])
def test_split_keeps_the_last_ten_percent_for_validation(n, n_train):
    tokens = np.arange(n, dtype=np.uint16)
    train, val = split_tokens(tokens)
    np.testing.assert_array_equal(train, np.arange(n_train))
    np.testing.assert_array_equal(val, np.arange(n_train, n))


# ---- the batch loader ------------------------------------------------------------------------------------------

TOKENS = np.arange(2000, dtype=np.uint16)  # token i is the number i: every window says where it came from


def window_starts(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_are_contiguous_windows_and_targets_are_shifted_by_one(shuffle):
    batches = TokenBatches(TOKENS, batch_size=4, seq_len=16, shuffle=shuffle, seed=1)
    for _ in range(3 * batches.steps_per_epoch()):  # across epoch boundaries
        x, y = batches.next_batch()
        assert x.shape == y.shape == (4, 16)
        assert x.dtype == y.dtype == torch.long
        assert x.is_contiguous() and y.is_contiguous()  # pinned for a GPU without a copy first
        for row_x, row_y in zip(x, y, strict=True):
            start = int(row_x[0])
            assert row_x.tolist() == TOKENS[start : start + 16].tolist()
            assert row_y.tolist() == TOKENS[start + 1 : start + 17].tolist()


def test_unshuffled_batches_read_the_stream_in_order():
    x, y = TokenBatches(TOKENS, batch_size=3, seq_len=8, shuffle=False).next_batch()
    assert window_starts(x) == [0, 8, 16]
    assert window_starts(y) == [1, 9, 17]


def test_an_epoch_visits_every_window_once():
    batches = TokenBatches(TOKENS, batch_size=4, seq_len=16, seed=3)
    starts = []
    for _ in range(batches.steps_per_epoch()):
        starts += window_starts(batches.next_batch()[0])
    assert batches.state_dict() == {"epoch": 0, "position": len(starts)}
    offset = starts[0] % 16
    # 1999 // 16 = 124 windows of 16 tokens (plus one target) whatever the offset, 31 batches of 4: each once.
    assert sorted(starts) == [offset + 16 * i for i in range(124)]
    batches.next_batch()
    assert batches.state_dict()["epoch"] == 1


def test_seed_decides_the_order():
    first = [TokenBatches(TOKENS, 4, 16, seed=seed).next_batch()[0] for seed in (5, 5, 6)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2])


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_share_the_windows_of_one_process_without_overlap(world_size):
    batch_size, seq_len = 4, 16
    ranks = [TokenBatches(TOKENS, batch_size, seq_len, rank, world_size, seed=7) for rank in range(world_size)]
    alone = TokenBatches(TOKENS, batch_size * world_size, seq_len, seed=7)
    assert alone.steps_per_epoch() == ranks[0].steps_per_epoch()
    for _ in range(2 * alone.steps_per_epoch() + 1):  # across epoch boundaries
        parts = [r.next_batch() for r in ranks]
        x_alone, y_alone = alone.next_batch()
        assert torch.equal(torch.cat([x for x, _ in parts]), x_alone)
        assert torch.equal(torch.cat([y for _, y in parts]), y_alone)
        seen = [set(x.flatten().tolist()) for x, _ in parts]
        assert sum(map(len, seen)) == len(set().union(*seen)) == batch_size * world_size * seq_len  # no token twice


def test_state_dict_resumes_exactly_across_an_epoch_boundary():
    def make() -> TokenBatches:
        return TokenBatches(TOKENS, batch_size=4, seq_len=16, rank=1, world_size=2, seed=11)

    batches = make()
    for _ in range(batches.steps_per_epoch() - 2):
        batches.next_batch()
    state = json.loads(json.dumps(batches.state_dict()))  # it travels in checkpoints as plain numbers
    expected = [batches.next_batch() for _ in range(5)]
    assert batches.state_dict()["epoch"] == 1
    resumed = make()
    resumed.load_state_dict(state)
    for (x, y), (x_resumed, y_resumed) in zip(expected, (resumed.next_batch() for _ in range(5)), strict=True):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)


@pytest.mark.parametrize(
    "batch_size, world_size, advice",
    [(4, 2, "use --batch-size 2 at most"), (7, 1, "use --batch-size 5 at most"), (1, 8, "use a smaller --seq-len")],
)
def test_a_step_larger_than_the_split_is_refused_with_the_largest_batch_that_fits(batch_size, world_size, advice):
    # 100 tokens hold (100 - 1 - 15) // 16 = 5 windows whatever the start offset: 2 for each of 2 processes.
    with pytest.raises(ShakeGPTError) as refused:
        TokenBatches(TOKENS[:100], batch_size=batch_size, seq_len=16, world_size=world_size)
    message = str(refused.value)
    assert message.startswith(f"100 tokens hold 5 windows of 16 tokens, fewer than the {batch_size} x {world_size}")
    assert "--batch-size" in message and advice in message and "\n" not in message


@pytest.mark.parametrize("batch_size, world_size", [(4, 1), (4, 3), (64, 1), (3, 8), (1, 200)])
@pytest.mark.parametrize("n_windows", [None, 10, 1000])
def test_evaluation_windows_split_the_same_windows_among_processes(batch_size, world_size, n_windows):
    seq_len = 16
    every_window = [(TOKENS[i * 16 : i * 16 + 16], TOKENS[i * 16 + 1 : i * 16 + 17]) for i in range(1999 // 16)]
    expected = every_window[:n_windows]  # by hand: the first n_windows windows from token 0, or all 124
    seen = []
    for rank in range(world_size):
        batches = list(evaluation_windows(TOKENS, batch_size, seq_len, n_windows, rank, world_size))
        assert all(1 <= len(x) <= batch_size for x, _ in batches)
        assert all(len(x) == batch_size for x, _ in batches[:-1])  # only the last batch may be smaller
        seen += [(x_row.numpy(), y_row.numpy()) for x, y in batches for x_row, y_row in zip(x, y, strict=True)]
    assert len(seen) == len(expected)
    order = sorted(range(len(seen)), key=lambda i: int(seen[i][0][0]))
    for i, (x_row, y_row) in zip(order, expected, strict=True):
        np.testing.assert_array_equal(seen[i][0], x_row)
        np.testing.assert_array_equal(seen[i][1], y_row)
