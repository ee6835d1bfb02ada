"""The demo app (app.py): a real browser drives the page, concurrent API users each get their own seeded text, bad
input is clamped or reported in one line.

The app runs as a subprocess on a free loopback port, serving a tiny checkpoint made here. Every expected text comes
from a second code path, the helper module's sample_text (one generate, one decode), never from the app.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port

from shakegpt.checkpoint import load_model, save_checkpoint
from shakegpt.memorisation import cached_indexes, corpus_indexes, memorisation_line, memorisation_report
from shakegpt.model import GPT, GPTConfig
from shakegpt.sampling import sample_text

gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120  # importing torch and gradio takes a while on two busy cores


def load_app_module():
    """app.py imported from the repository root (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("shakegpt_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = load_app_module()


def app_env() -> dict[str, str]:
    """The environment for an app subprocess: no checkpoint variable, no proxy for loopback, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.pop("SHAKEGPT_CKPT", None)
    env.update(NO_PROXY=LOOPBACK, no_proxy=LOOPBACK, GRADIO_ANALYTICS_ENABLED="False")
    return env


def start_app(script: Path, cwd: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Run `script` on a free loopback port and wait until its page answers; the process and the page's address.
    Its stderr goes to cwd/stderr.txt (a file: a pipe nobody reads could fill up and stall the server)."""
    port = free_port()
    command = [sys.executable, str(script), "--port", str(port), "--device", "cpu", *args]
    with (cwd / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=app_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://{LOOPBACK}:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}: {(cwd / 'stderr.txt').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"app.py did not answer on {url} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny preset with its real GPT-2 vocabulary (random weights: only the plumbing matters)."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", GPT(GPTConfig.tiny()), step=2)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> GPT:
    """The checkpoint's model, loaded here, for the expected texts."""
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, stop_server) -> Iterator[str]:
    """`python app.py --ckpt tiny.pt` on a free loopback port; its address."""
    cwd = tmp_path_factory.mktemp("cwd")
    process, url = start_app(ROOT / "app.py", cwd, "--ckpt", str(checkpoint))
    try:
        yield url
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def client(server: str):
    return gradio_client.Client(server, verbose=False, analytics_enabled=False)


def generate(client, prompt: str, max_new_tokens: float, temperature: float, top_k: float, seed: float | None) -> str:
    """One request to the page's generate endpoint; the final text."""
    return client.predict(prompt, max_new_tokens, temperature, top_k, seed, api_name="/generate")


def test_browser_types_a_prompt_and_gets_text_that_continues_it(server: str):
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    prompt = "ROMEO:\nBut soft, what light"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page()
            page.goto(server)
            assert "context 64 tokens" in page.locator("#notice").inner_text()  # the loaded model is described
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#generate").click()
            output = page.locator("#output textarea")
            page.wait_for_function(
                "([selector, n]) => document.querySelector(selector).value.length > n",
                arg=["#output textarea", len(prompt)],
                timeout=60_000,
            )
            text = output.input_value()
        finally:
            browser.close()
    assert text.startswith(prompt)
    assert len(text) > len(prompt)


def test_the_page_offers_the_reference_prompt_among_its_examples(server: str):
    with urllib.request.urlopen(server + "config", timeout=10) as response:
        config = json.loads(response.read())
    [examples] = [component for component in config["components"] if component.get("type") == "dataset"]
    assert ["Hello world: tell to"] in examples["props"]["samples"]
    assert ["ROMEO:\n"] in examples["props"]["samples"]


def test_concurrent_users_each_get_their_own_seeded_text(client, model: GPT):
    prompt, seeds = "JULIET:\n", [11, 12, 13, 14]
    alone = {seed: generate(client, prompt, 24, 1.0, 0, seed) for seed in seeds}
    with ThreadPoolExecutor(len(seeds)) as pool:
        texts = pool.map(lambda seed: generate(client, prompt, 24, 1.0, 0, seed), seeds)
    together = dict(zip(seeds, texts, strict=True))
    assert together == alone
    assert len(set(alone.values())) == len(seeds)  # different seeds, different texts: a mix-up would show
    for seed in seeds:
        assert alone[seed] == sample_text(model, prompt, 24, temperature=1.0, top_k=None, seed=seed)[0]


def test_text_streams_in_as_it_is_generated(client):
    job = client.submit("ROMEO:", 12, 1.0, 0, 2, api_name="/generate")
    final = job.result()
    updates = job.outputs()
    assert len(updates) > 1 and updates[-1] == final
    assert all(later.startswith(earlier) for earlier, later in pairwise(updates))  # each adds to the last


def test_empty_prompt_starts_from_end_of_text(client, model: GPT):
    text = generate(client, "", 16, 1.0, 0, 5)
    assert text and text == sample_text(model, "", 16, temperature=1.0, top_k=None, seed=5)[0]


def test_long_prompt_is_cut_to_its_end(client, model: GPT):
    prompt = "".join(f"{i}: To be, or not to be, that is the question.\n" for i in range(200))
    assert len(prompt) > app.MAX_PROMPT_CHARS
    kept = prompt[-app.MAX_PROMPT_CHARS :]
    text = generate(client, prompt, 8, 1.0, 0, 7)
    assert text.startswith(kept) and not text.startswith(prompt[: app.MAX_PROMPT_CHARS])
    assert text == sample_text(model, kept, 8, temperature=1.0, top_k=None, seed=7)[0]


def test_out_of_range_values_from_the_api_are_clamped(client, model: GPT):
    low = generate(client, "KING:", -7, -3.0, -5, -9)  # 1 token, greedy, no top-k cut, seed 0
    assert low == sample_text(model, "KING:", 1, temperature=0.0, top_k=None, seed=0)[0]
    high = generate(client, "KING:", 12, 50.0, 10**9, 10**12)
    expected = sample_text(model, "KING:", 12, temperature=app.TEMPERATURE_MAX, top_k=app.TOP_K_MAX, seed=app.MAX_SEED)
    assert high == expected[0]


def test_top_p_from_the_api_is_sample_texts_and_out_of_range_values_are_clamped(client, model: GPT):
    nucleus = client.predict("ROMEO:", 16, 1.5, 0, 4, 0.5, api_name="/generate")
    assert nucleus == sample_text(model, "ROMEO:", 16, temperature=1.5, top_k=None, seed=4, top_p=0.5)[0]
    assert nucleus != sample_text(model, "ROMEO:", 16, temperature=1.5, top_k=None, seed=4)[0]  # it cuts something
    low = client.predict("ROMEO:", 16, 1.5, 0, 4, -1.0, api_name="/generate")
    assert low == sample_text(model, "ROMEO:", 16, temperature=1.5, top_k=None, seed=4, top_p=app.TOP_P_MIN)[0]
    high = client.predict("ROMEO:", 16, 1.5, 0, 4, 7.0, api_name="/generate")
    assert high == sample_text(model, "ROMEO:", 16, temperature=1.5, top_k=None, seed=4)[0]


def test_max_new_tokens_is_bounded(model: GPT, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(app, "MAX_NEW_TOKENS", 6)
    texts = list(app.make_handler(model, "")("HAMLET:", 10**6, 1.0, 0, 3))
    assert texts[-1] == sample_text(model, "HAMLET:", 6, temperature=1.0, top_k=None, seed=3)[0]


def test_the_memorisation_note_measures_what_the_model_wrote(monkeypatch, tmp_path):
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path))  # the token cache of this test, not the repository's
    cached_indexes.cache_clear()
    try:
        quoted = "First Citizen:\nBefore we proceed any further, hear me speak."  # the training text's first lines
        note = app.memorisation_note("Hello world: tell to", "Hello world: tell to" + quoted)
        report = memorisation_report(quoted, corpus_indexes()[0])
        assert note.startswith("**Quoting or composing?**") and memorisation_line(quoted) in note
        assert report["longest_span_tokens"] == report["tokens"] > 10  # all of it, copied
        assert app.memorisation_note("ROMEO:", "ROMEO:") == ""  # nothing written, nothing to measure
    finally:
        cached_indexes.cache_clear()


def test_the_page_measures_memorisation_against_the_text_file_the_checkpoint_trained_on(tmp_path, monkeypatch):
    """A checkpoint of a run on --text-file: the page's note (its API, as the browser calls it after each answer)
    measures that file, in which the written passage is, not tiny Shakespeare, in which it is not."""
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path / "cache"))
    cached_indexes.cache_clear()
    written = " the snow fell on the little café in the hills, and the baker sang of pears."
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(f"Day {i}:{written}\n" for i in range(300)), encoding="utf-8")
    torch.manual_seed(0)
    trained_on = {"corpus": "tinyshakespeare", "text_file": str(notes)}  # as a run on --text-file records it
    save_checkpoint(tmp_path / "notes.pt", GPT(GPTConfig.tiny()), step=1, train_config=trained_on)
    model, _, text = app.load_for_app(tmp_path / "notes.pt", torch.device("cpu"))
    assert text == ("tinyshakespeare", str(notes))
    demo = app.build_app(model, "notes", trained_on=text)
    demo.launch(server_name=LOOPBACK, server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        local = gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False)
        note = local.predict("Dear diary,", f"Dear diary,{written}", api_name="/memorisation")
        assert memorisation_line(written, *text) in note
        assert memorisation_report(written, corpus_indexes(text[0], text_file=text[1])[0])["ngram_overlap"] == 1.0
        assert memorisation_line(written) not in note  # tiny Shakespeare measures otherwise
    finally:
        demo.close()
        cached_indexes.cache_clear()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 2.0), (-1, 0.0), (1.5, 1.5), ("1.25", 1.25), (float("inf"), 2.0), (float("nan"), 0.7), (None, 0.7)]
    + [("x", 0.7)],
)
def test_clamp(value: object, expected: float):
    assert app.clamp(value, 0.0, 2.0, 0.7) == expected


def test_generation_error_is_shown_and_the_server_keeps_serving(tiny_config: GPTConfig):
    """A 101-token vocabulary cannot read "ROMEO" (its tokens are above 100), a real failure inside generation."""
    torch.manual_seed(0)
    demo = app.build_app(GPT(tiny_config).eval(), "test model")
    demo.launch(server_name=LOOPBACK, server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        local = gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False)
        with pytest.raises(gradio_client.exceptions.AppError, match="Generation failed: index out of range"):
            generate(local, "ROMEO", 5, 1.0, 0, 1)
        assert generate(local, "A", 5, 1.0, 0, 1).startswith("A")  # single-byte tokens are below 101
    finally:
        demo.close()


def test_checkpoint_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    space, trained = tmp_path / "model.pt", tmp_path / "runs" / "shakespeare" / "best.pt"
    monkeypatch.setattr(app, "SPACE_CHECKPOINT", space)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHAKEGPT_CKPT", raising=False)
    assert app.find_checkpoint(None) is None
    trained.parent.mkdir(parents=True)
    trained.touch()
    assert app.find_checkpoint(None).resolve() == trained
    space.touch()
    assert app.find_checkpoint(None) == space
    monkeypatch.setenv("SHAKEGPT_CKPT", "from_env.pt")
    assert app.find_checkpoint(None) == Path("from_env.pt")  # an explicit choice, even if missing: it must load
    assert app.find_checkpoint("given.pt") == Path("given.pt")


def test_without_a_checkpoint_the_page_says_how_to_train(tmp_path: Path, stop_server):
    script = shutil.copy(ROOT / "app.py", tmp_path / "app.py")  # no model.pt beside it, no runs/ below it
    process, url = start_app(Path(script), tmp_path)
    try:
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            assert "python -m shakegpt_utils train" in response.read().decode()
        local = gradio_client.Client(url, verbose=False, analytics_enabled=False)
        with pytest.raises(gradio_client.exceptions.AppError, match="No checkpoint found"):
            generate(local, "ROMEO:", 5, 1.0, 0, 1)
    finally:
        stop_server(process)
    stderr = (tmp_path / "stderr.txt").read_text()  # start_app sends the app's stderr there
    assert "No checkpoint found. Train one with `python -m shakegpt_utils train`" in stderr


@pytest.mark.parametrize(
    ("content", "args", "code", "message"),
    [
        (None, [], 1, "no checkpoint at"),
        (b"not a checkpoint", [], 1, "is not a readable checkpoint"),
        (None, ["--device", "nonsense"], 2, "argument --device: Expected one of"),
        (None, ["--port", "70000"], 2, "--port 70000 is not a port number"),
    ],
)
def test_bad_command_lines_are_one_line_errors(tmp_path, capsys, content, args, code, message):
    """main's return value is the exit status (`sys.exit(main())`); argparse's errors exit with 2."""
    ckpt = tmp_path / "bad.pt"
    if content is not None:
        ckpt.write_bytes(content)
    try:
        returned = app.main(["--ckpt", str(ckpt), *args])
    except SystemExit as exit_:
        returned = exit_.code
    assert returned == code
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("app.py: error:") and message in line


def test_a_checkpoint_with_mismatched_weights_is_a_one_line_error(tmp_path, capsys, tiny_config: GPTConfig):
    payload = torch.load(save_checkpoint(tmp_path / "ok.pt", GPT(tiny_config)), weights_only=True)
    payload["model_config"]["n_embd"] = 64  # the weights are 32 wide
    torch.save(payload, tmp_path / "mismatched.pt")
    assert app.main(["--ckpt", str(tmp_path / "mismatched.pt")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"app.py: error: {tmp_path / 'mismatched.pt'} does not hold a usable ShakeGPT model:")


def test_a_busy_port_is_a_one_line_error(checkpoint: Path, capsys):
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert app.main(["--ckpt", str(checkpoint), "--port", str(port), "--device", "cpu"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("app.py: error: Cannot find empty port") and str(port) in line


def test_space_metadata_and_requirements():
    front_matter = ROOT.joinpath("space", "README.md").read_text().split("---\n")[1]
    metadata = yaml.safe_load(front_matter)
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert int(str(metadata["sdk_version"]).split(".")[0]) >= 5  # the Gradio API app.py is written for
    requirements = ROOT.joinpath("space", "requirements.txt").read_text()
    assert "git+" not in requirements  # the Space carries the project's code itself (tests/test_space.py)


@pytest.fixture
def loopback_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests from this process to the loopback address go straight there, whatever proxy the environment names."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", LOOPBACK)
    monkeypatch.setenv("no_proxy", LOOPBACK)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


def test_the_notebook_way_serves_the_page_and_the_notebook_goes_on(
    checkpoint: Path, model: GPT, loopback_without_proxy
):
    """Notebook 07's cell: `app.launch_in_notebook(checkpoint)` returns at once with the page served from this process;
    the page describes the model and its API writes what sample_text writes."""
    demo = app.launch_in_notebook(checkpoint, device="cpu")  # as notebook 08 calls it
    try:
        with urllib.request.urlopen(demo.local_url, timeout=30) as response:
            assert response.status == 200 and "ShakeGPT" in response.read().decode()
        client = gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False)
        text = generate(client, "ROMEO:", 10, 1.0, 0, 3)
        assert text == sample_text(model, "ROMEO:", 10, temperature=1.0, top_k=None, seed=3)[0]
    finally:
        demo.close()


@pytest.mark.parametrize("args, share", [([], False), (["--share"], True)])
def test_share_asks_gradio_for_a_public_link(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, args, share):
    launches = []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda demo, **kwargs: launches.append(kwargs))
    assert app.main(["--ckpt", str(checkpoint), "--device", "cpu", *args]) == 0
    assert [launch["share"] for launch in launches] == [share]


def test_with_the_spaces_package_the_generate_function_is_marked_for_zerogpu(model: GPT, monkeypatch):
    """A Space installs the `spaces` package, whose spaces.GPU lends each call of a marked function a GPU on ZeroGPU
    hardware; a stand-in package records what app.py marks and each call. The page's generate endpoint runs the
    marked function, which writes what sample_text writes; without the package the function is the plain one."""
    marked, calls = [], []

    def gpu(function):
        marked.append(function)

        def on_gpu(*args):
            calls.append(args)
            yield from function(*args)

        return on_gpu

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    demo = load_app_module().build_app(model, "notice")
    (endpoint,) = [function for function in demo.fns.values() if function.api_name == "generate"]
    assert [function.__qualname__ for function in marked] == ["make_handler.<locals>.generate"]
    *_, text = endpoint.fn("ROMEO:", 12, 1.0, 0, 7)
    assert calls == [("ROMEO:", 12, 1.0, 0, 7)]
    assert text == sample_text(model, "ROMEO:", 12, temperature=1.0, top_k=None, seed=7)[0]
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: `import spaces` fails
    assert load_app_module().make_handler(model, "notice").__qualname__ == "make_handler.<locals>.generate"
