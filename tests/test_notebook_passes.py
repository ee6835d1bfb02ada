"""The notebook passes of the GPU check: notebooks 05-08 top to bottom as this device runs them, or as a Colab T4 would
see them, each reporting its peak GPU memory and the ladder's skipped rungs.

    pytest tests/test_notebook_passes.py --notebook-pass device --executed-dir OUT   # saves each executed notebook
    pytest tests/test_notebook_passes.py --notebook-pass t4                          # a CUDA GPU only

Without --notebook-pass the pass is skipped (CI runs the notebooks in the quick mode in test_notebooks.py);
tools/gpu_check.py's `notebooks` and `t4` parts run it one notebook at a time. The quick switch comes from the
environment, as ever (the GPU check's dry run on a CPU sets it). The other tests check how the cells are placed and
how a failing or over-time notebook is reported, on the CPU.
"""

from __future__ import annotations

import json
import re
import time
import types
from pathlib import Path

import nbformat
import pytest
import torch

from shakegpt.basics import PROJECT_ROOT, first_line
from shakegpt.hardware import get_device

nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PASS_NOTEBOOKS = ("05_optimizations", "06_training", "07_evaluation", "08_sampling")
T4_CELL = """# tests/test_notebook_passes.py: this GPU as a Colab T4 (15 GB, compute capability 7.5) would show itself
import torch

torch.cuda.set_per_process_memory_fraction(min(1.0, 15e9 / torch.cuda.get_device_properties(0).total_memory))
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.enable_flash_sdp(False)  # a T4 runs SDPA's memory-efficient or math kernels only
torch.backends.cuda.enable_cudnn_sdp(False)
torch.cuda.get_device_capability = lambda device=None: (7, 5)  # the package then picks fp16 with a GradScaler"""
T4_STEPS_CELL = """if "SETTINGS" in globals():  # the T4 pass: fewer training steps, the same model and batch
    SETTINGS = {{**SETTINGS, "max_steps": {steps}}}"""
MEASURED = "notebook pass: "  # starts the line MEASURE_CELL prints
# Peak GPU memory: the allocator's high-water mark, or a ladder rung's own where higher (the ladder resets the mark).
MEASURE_CELL = f"""# tests/test_notebook_passes.py: this run's peak GPU memory (MiB) and the ladder's skipped rungs
import json, torch
_rows = globals()["ladder"].result()["rows"] if hasattr(globals().get("ladder"), "result") else []
_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
_peaks = [torch.cuda.max_memory_allocated() / 2**20] + [r.get("peak_memory_mb") or 0 for r in _rows if not r["skipped"]]
print("{MEASURED}" + json.dumps({{
    "peak_allocated_mib": max(_peaks) if _gpu else None,
    "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if _gpu else None,
    "skipped_rungs": {{r["name"]: r["reason"] for r in _rows if r["skipped"]}},
}}))"""


def as_on_a_t4(nb: nbformat.NotebookNode, max_steps: int) -> None:
    """T4_CELL after the Colab set-up, so the package sees a T4 from its first use; T4_STEPS_CELL after parameters."""
    first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    nb.cells.insert(first_code + 1, nbformat.v4.new_code_cell(T4_CELL))
    parameters = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    nb.cells.insert(parameters + 1, nbformat.v4.new_code_cell(T4_STEPS_CELL.format(steps=max_steps)))


def execute_notebook(nb: nbformat.NotebookNode, limit_s: float) -> tuple[dict, list[str]]:
    """Run `nb` from notebooks/ with MEASURE_CELL, within `limit_s` in all, the kernel's start included: what it
    measured, and the failing or over-time cell's error. `nb` keeps its outputs, without MEASURE_CELL."""
    nb.cells.append(nbformat.v4.new_code_cell(MEASURE_CELL))
    deadline, running, problems = time.monotonic() + limit_s, {}, []
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", shutdown_kernel="immediate", resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())), on_cell_start=running.update,
    )  # fmt: skip
    try:
        client.execute()
    except (nbclient.exceptions.CellExecutionError, TimeoutError, nbclient.exceptions.DeadKernelError) as error:
        message = f"{error.ename}: {error.evalue}" if hasattr(error, "ename") else first_line(error)
        problems.append(f"cell {running.get('cell', {}).get('id')}: {message.splitlines()[0]}")
    printed = "".join(output.get("text", "") for output in nb.cells.pop().get("outputs", []))
    measured = {"peak_allocated_mib": None, "peak_reserved_mib": None, "skipped_rungs": None}
    measured.update(json.loads(printed.split(MEASURED, 1)[1]) if MEASURED in printed else {})
    return measured, problems


@pytest.mark.slow
@pytest.mark.parametrize("name", PASS_NOTEBOOKS)
def test_notebook_pass(name: str, pytestconfig, record_property, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One notebook to the end within --notebook-minutes; what it measured is the JUnit property `measured`."""
    notebook_pass = pytestconfig.getoption("--notebook-pass")
    if notebook_pass is None:
        pytest.skip("a pass of the GPU check: run with --notebook-pass device or t4")
    device = get_device()
    if notebook_pass == "t4" and device.type != "cuda":
        pytest.skip(f"a T4 is emulated on a CUDA GPU only: {device.type} has no memory share or kernels to limit")
    monkeypatch.setenv("SHAKEGPT_FIGURES_DIR", str(tmp_path))  # the committed figures stay as they are
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    if notebook_pass == "t4":
        as_on_a_t4(nb, pytestconfig.getoption("--t4-max-steps"))
    measured, problems = execute_notebook(nb, 60 * pytestconfig.getoption("--notebook-minutes"))
    record_property("measured", json.dumps(measured))
    executed_dir = pytestconfig.getoption("--executed-dir")
    if executed_dir is not None:
        executed_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed_dir / f"{name}.ipynb")
    if problems:
        pytest.fail(problems[0], pytrace=False)


@pytest.mark.parametrize(
    "source, limit_s, error",
    [("1 / 0", 60, r"ZeroDivisionError: division by zero"),
     ("import time\ntime.sleep(60)", 5, r"A cell timed out while it was being executed, after [1-5] seconds\.")],
)  # fmt: skip
def test_a_failing_or_over_time_notebook_names_its_cell(source: str, limit_s: float, error: str):
    """The cell's error, or the time limit (which counts the kernel's start too), as the reason; the kernel stopped at
    once; the notebook keeps what ran, without the measuring cell."""
    cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell("y = 2")]
    nb = nbformat.v4.new_notebook(cells=[nbformat.from_dict(cell) for cell in cells])
    started = time.monotonic()
    measured, problems = execute_notebook(nb, limit_s)
    assert time.monotonic() - started < limit_s + 20
    assert len(problems) == 1 and re.fullmatch(f"cell {cells[1].id}: {error}", problems[0])
    assert measured == {"peak_allocated_mib": None, "peak_reserved_mib": None, "skipped_rungs": None}
    assert [cell.source for cell in nb.cells] == [cell.source for cell in cells]
    assert nb.cells[0].execution_count == 1 and nb.cells[2].execution_count is None


@pytest.mark.parametrize("name", PASS_NOTEBOOKS)
def test_t4_cells_come_first_and_cut_only_the_training_steps(name: str):
    """The T4 cell right after the Colab set-up, so the package sees a T4 from its first use; the steps cell right
    after the parameters, where it changes only max_steps of notebook 06's SETTINGS, in their real (not smoke) mode."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    sources = [cell.source for cell in nb.cells]
    as_on_a_t4(nb, 200)
    setup = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    parameters = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    assert nb.cells[setup + 1].source == T4_CELL and setup + 1 < parameters
    assert [cell.source for i, cell in enumerate(nb.cells) if i not in (setup + 1, parameters + 1)] == sources
    compile(T4_CELL, "T4_CELL", "exec")
    namespace = {
        "sg": types.SimpleNamespace(SMOKE=False, MEMORISATION_RUN={}),
        "Path": Path,
        "device": torch.device("cuda"),
    }
    exec(nb.cells[parameters].source, namespace)
    before = namespace.get("SETTINGS")
    exec(nb.cells[parameters + 1].source, namespace)
    assert namespace.get("SETTINGS") == (None if before is None else {**before, "max_steps": 200})
    assert (before is not None) == (name == "06_training")
