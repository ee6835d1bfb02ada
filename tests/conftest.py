"""Shared fixtures: the device of the device tests, a tiny model config, random transformers GPT-2 models, the shared
corpora, temporary cache folders, a loopback HTTP server and a switch that cuts off the network.

A test that takes the `device` fixture is marked `device`: `pytest -m device --device cuda` runs exactly those on a GPU
(tools/gpu_check.py does), and plain `pytest` runs them on the CPU with the rest. The notebook passes of the GPU check
take options of their own (--notebook-pass and the rest: tests/test_notebook_passes.py).

The corpora are never copied into the repository: tests read them from $SHAKEGPT_DATA_DIR (CI sets it to
../shared/data, relative to the repository root) and give every loader a temporary cache folder.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from shakegpt.basics import PROJECT_ROOT, ShakeGPTError
from shakegpt.hardware import get_device
from shakegpt.model import GPTConfig

LOOPBACK = "127.0.0.1"

# The tests use tiny models, where a second thread only adds synchronisation: on a busy 2-core machine, two
# spinning threads per product made the core tests 2.5x slower. Training subprocesses set OMP_NUM_THREADS=1 too.
torch.set_num_threads(1)


def _find_data_dir() -> Path | None:
    """$SHAKEGPT_DATA_DIR as an absolute path (a relative one is tried against the working directory, then the
    repository root); unset, the ../shared/data folder beside the repository if there is one."""
    value = os.environ.get("SHAKEGPT_DATA_DIR")
    if value:
        path = Path(value)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    else:
        candidates = [PROJECT_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="where the tests marked `device` run: cpu (default), cuda, cuda:N")
    group = parser.getgroup("notebook passes", "the GPU check's notebook passes (tests/test_notebook_passes.py)")
    group.addoption("--notebook-pass", choices=("device", "t4"), help="run notebooks 05-08 as this device runs them, "
                    "or as a Colab T4 would see them (CUDA only); without it the pass is skipped")  # fmt: skip
    group.addoption("--notebook-minutes", type=float, default=60.0, help="time limit of each notebook (default: 60)")
    group.addoption("--executed-dir", type=Path, help="where to save each executed notebook (default: nowhere)")
    group.addoption("--t4-max-steps", type=int, default=200, help="max_steps of notebook 06's run in the t4 pass")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `device` marker, and refuse at once a --device that is not here (one line, exit status 4)."""
    config.addinivalue_line("markers", "device: takes its device from --device (pytest -m device --device cuda)")
    config.addinivalue_line("markers", "slow: executes notebooks, a minute or more each (CI runs them too)")
    requested = config.getoption("--device")
    try:
        get_device(requested)
    except (ShakeGPTError, RuntimeError) as error:  # no CUDA here, or no such device type
        message = str(error) if isinstance(error, ShakeGPTError) else f"--device {requested}: {error}"
        raise pytest.UsageError(message.splitlines()[0]) from None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `device` every test that takes the device fixture (not a parameter of its own called device)."""
    for item in items:
        parameters = item.callspec.params if hasattr(item, "callspec") else {}
        if "device" in getattr(item, "fixturenames", ()) and "device" not in parameters:
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The device given by --device; CUDA with its index (DistributedDataParallel wants one), made current."""
    device = get_device(pytestconfig.getoption("--device"))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


DATA_DIR = _find_data_dir()
if DATA_DIR is not None:
    # Absolute, so that the data code finds the corpora whatever the working directory of a test.
    os.environ["SHAKEGPT_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The folder holding tinyshakespeare.txt and shakespeare_complete.txt (read only)."""
    if DATA_DIR is None:
        pytest.skip("the Shakespeare corpora are not available: set SHAKEGPT_DATA_DIR to the folder that holds them")
    for name in ("tinyshakespeare.txt", "shakespeare_complete.txt"):
        if not (DATA_DIR / name).is_file():
            pytest.fail(f"SHAKEGPT_DATA_DIR={DATA_DIR} does not hold {name}")
    return DATA_DIR


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """An empty temporary folder to pass as cache_dir=, so that no corpus or token cache lands in the repository."""
    folder = tmp_path / "cache"
    folder.mkdir()
    return folder


@pytest.fixture
def tiny_config() -> GPTConfig:
    """A model small enough for exact comparisons in milliseconds; the odd vocabulary catches transposed shapes."""
    return GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="session")
def random_hf_gpt2() -> Callable[..., torch.nn.Module]:
    """A maker of randomly initialised transformers GPT-2 models without dropout, every parameter (LayerNorm gains
    and biases too) drawn at random so that a weight converted to the wrong place cannot go unnoticed."""
    transformers = pytest.importorskip("transformers")

    def make(
        n_layer: int,
        n_head: int,
        n_embd: int,
        n_positions: int,
        vocab_size: int,
        seed: int = 0,
        matrix_std: float = 0.1,
    ) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = transformers.GPT2Config(
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            n_positions=n_positions,
            vocab_size=vocab_size,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
        )
        model = transformers.GPT2LMHeadModel(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() < 2 and name.endswith("weight"):  # LayerNorm gains
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.normal_(0.0, matrix_std if p.dim() >= 2 else 0.1)
        return model.eval()

    return make


class LoopbackServer:
    """A static file server on 127.0.0.1 serving `root`; the path CUT_SHORT answers with half a response, as a
    dropped connection would."""

    CUT_SHORT = "cut-short"

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.requests: list[str] = []

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{name}"


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """http.server in a thread on 127.0.0.1 (a free port) serving a temporary folder; shut down afterwards."""
    root = tmp_path / "served"
    root.mkdir()
    # A proxy from the environment must not intercept requests to the loopback address.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", f"{LOOPBACK},localhost")
    monkeypatch.setenv("NO_PROXY", f"{LOOPBACK},localhost")

    server_info: LoopbackServer

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # keep the test output clean, but remember the request
            server_info.requests.append(self.path)

        def do_GET(self) -> None:
            if self.path != f"/{LoopbackServer.CUT_SHORT}":
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"First Citizen:")  # 14 of the 1000 bytes promised, then the connection closes
            self.close_connection = True

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), functools.partial(Handler, directory=str(root)))
    server_info = LoopbackServer(root, httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server_info
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released): for a server a test starts (`from conftest import
    free_port`), or an address a test must not reach (closed_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (free_port)."""
    return free_port()


def _is_loopback(host) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup beyond the loopback address fails at once with OSError."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"network access is disabled in this test ({address!r})")
        return real_connect(self, address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise socket.gaierror(f"network access is disabled in this test ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def end_process(process: subprocess.Popen, grace_s: float = 20) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it has not ended within `grace_s` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def stop_server() -> Callable[[subprocess.Popen], None]:
    """end_process, for tests and fixtures that start a server (the app, the Space)."""
    return end_process


@pytest.fixture(scope="session")
def gpu_check():
    """tools/gpu_check.py as a module, for its functions and constants."""
    spec = importlib.util.spec_from_file_location("gpu_check", PROJECT_ROOT / "tools" / "gpu_check.py")
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
