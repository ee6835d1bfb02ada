"""Every numbered notebook runs top to bottom in smoke mode, and keeps the shape all the course's notebooks share.

The shape of a notebook:
1. The first cell is markdown: a "# " title and the Open-in-Colab badge, exactly `sg.colab_badge("<file name>")`.
2. The first code cell is the Colab set-up: on Colab ("google.colab" in sys.modules) it clones REPO_URL (the literal
   `sg.repository_url()`), runs `pip install -e` on it and changes into it; anywhere else it does nothing.
3. The first output of the notebook is the line `sg.describe_device()` prints: the device the outputs came from.
4. Exactly one code cell is tagged "parameters"; it sets the sizes from `sg.SMOKE`, and no other cell reads SMOKE.
5. Sections of why (markdown) and how (code), one idea each. A notebook that builds a piece ends by asserting that
   its version and the helper module's give the same outputs on the same input.
6. Figures are saved with `sg.save_figure(fig, "NN_name")`, NN being the notebook's number: PNG and SVG in figures/.
7. Two to four exercises, each a markdown heading "### Exercise N: what to do", then the learner's cell (it raises
   NotImplementedError until it is done) and a check cell `with sg.exercise_check("NN", N):` holding the asserts.
   `notebooks/solutions/NN_solutions.ipynb` has the same headings and check cells, byte for byte, with each
   learner's cell completed; it has the same first cells (title with its badge, set-up, device line, parameters).
Committed notebooks, solutions included, carry the outputs of one real (not smoke) run, top to bottom, and no output
names a folder of the machine that ran it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from exercise_mutants import MUTANTS

from shakegpt.basics import PROJECT_ROOT, colab_badge, repository_url

nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("[0-9][0-9]_solutions.ipynb"))
EXERCISE_HEADING = re.compile(r"^### Exercise (\d+): \S")
# A folder of the machine that ran a notebook (Linux, macOS, Colab, Windows): outputs name paths relative to the project
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:home|Users|work|tmp|root|content|mnt|opt|srv|var)/|\b[A-Z]:\\\\")
DEVICE_LINE = re.compile(r"^(cpu|cuda|mps): .+; torch \S+; autocast \w+$")
SAVED_FIGURE = re.compile(r"""sg\.save_figure\(\s*\w+\s*,\s*["']([^"']+)["']""")
CELL_TIMEOUT_S = 120


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def first_output_line(nb: nbformat.NotebookNode) -> str:
    """The first line of text the notebook printed (stream or result), or '' if it printed nothing."""
    for cell in code_cells(nb):
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                return output.text.splitlines()[0]
            if output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
                return output.data["text/plain"].splitlines()[0]
    return ""


def output_texts(nb: nbformat.NotebookNode) -> list[str]:
    """Every text the notebook's cells printed or returned."""
    texts = []
    for cell in code_cells(nb):
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(value for kind, value in output.get("data", {}).items() if kind.startswith("text/"))
    return texts


def exercises(nb: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    """(heading, the learner's cell, the check cell) of every exercise, in order."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and EXERCISE_HEADING.match(cell.source):
            answer, check = (nb.cells[i + 1 : i + 3] + [nbformat.v4.new_markdown_cell()] * 2)[:2]
            found.append(
                (cell.source.splitlines()[0], answer.source, check.source if check.cell_type == "code" else "")
            )
    return found


def exercise_headings(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "markdown" and EXERCISE_HEADING.match(cell.source)]


def solutions_of(path: Path) -> Path:
    return NOTEBOOK_DIR / "solutions" / f"{path.name[:2]}_solutions.ipynb"


def saved_figure_names(nb: nbformat.NotebookNode) -> list[str]:
    return [name for cell in code_cells(nb) for name in SAVED_FIGURE.findall(cell.source)]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no numbered notebooks in {NOTEBOOK_DIR}"


def test_every_notebook_has_the_same_colab_setup_cell():
    """One set-up cell, byte for byte: it clones, installs the bare package (Colab keeps its own Jupyter), and puts
    the clone on sys.path, because the kernel started before the install and would not find the package."""
    cells = {path.name: code_cells(nbformat.read(path, as_version=4))[0].source for path in NOTEBOOKS + SOLUTIONS}
    first = cells[NOTEBOOKS[0].name]
    assert {name: source == first for name, source in cells.items()} == dict.fromkeys(cells, True)
    assert 'sys.path.insert(0, "/content/shakegpt")' in first
    assert '"install", "-q", "-e", "/content/shakegpt"]' in first  # no extras such as [lab]


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_notebook_has_the_course_shape(path: Path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell must be the title"
    badge = colab_badge(str(path.relative_to(NOTEBOOK_DIR)))
    assert badge in first.source, "the first cell must hold sg.colab_badge(<this file's path in notebooks/>)"

    colab = code_cells(nb)[0]
    assert '"google.colab" in sys.modules' in colab.source, "the first code cell must be the Colab set-up"
    repo_urls = re.findall(r'^REPO_URL = "([^"]+)"', colab.source, flags=re.M)
    assert repo_urls == [repository_url()], f"the Colab cell must set REPO_URL = {repository_url()!r}, not {repo_urls}"
    assert "pip" in colab.source and "install" in colab.source and "-e" in colab.source

    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells are tagged 'parameters'; there must be exactly one"
    assert tagged[0].cell_type == "code" and "sg.SMOKE" in tagged[0].source
    elsewhere = [cell.id for cell in code_cells(nb) if "SMOKE" in cell.source and cell is not tagged[0]]
    assert not elsewhere, f"only the parameters cell may read the smoke switch, not cells {elsewhere}"

    number = path.name[:2]
    for name in saved_figure_names(nb):
        assert name.startswith(f"{number}_"), f"figure {name!r} must be named after its notebook ({number}_...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_exercises_and_their_solutions(path: Path):
    number = path.name[:2]
    found = exercises(nbformat.read(path, as_version=4))
    assert 2 <= len(found) <= 4, f"{len(found)} exercises (headings '### Exercise N: ...'); there must be 2 to 4"
    for n, (heading, answer, check) in enumerate(found, start=1):
        assert heading.startswith(f"### Exercise {n}: "), f"exercise {n}'s heading is {heading!r}"
        assert "raise NotImplementedError" in answer, f"exercise {n}: the cell after its heading is the learner's"
        assert f'with sg.exercise_check("{number}", {n}):' in check, f"exercise {n}: the next cell must check it"

    assert solutions_of(path).is_file(), f"notebooks/solutions/{number}_solutions.ipynb is missing"
    solved = exercises(nbformat.read(solutions_of(path), as_version=4))
    assert [heading for heading, _, _ in solved] == [heading for heading, _, _ in found]
    for n, ((_, _, check), (_, answer, solved_check)) in enumerate(zip(found, solved, strict=True), start=1):
        assert solved_check == check, f"exercise {n}: the solutions must run the notebook's check cell unchanged"
        assert "NotImplementedError" not in answer, f"exercise {n} is not solved in the solutions notebook"


def test_every_solutions_notebook_belongs_to_a_notebook():
    numbers = {path.name[:2] for path in NOTEBOOKS}
    assert [path.name for path in SOLUTIONS if path.name[:2] not in numbers] == []


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_committed_outputs_name_no_folder_of_the_machine_that_ran_them(path: Path):
    nb = nbformat.read(path, as_version=4)
    absolute = [match.group() for text in output_texts(nb) for match in ABSOLUTE_PATH.finditer(text)]
    assert not absolute, f"outputs name absolute paths ({absolute[:3]}): print them relative to the project"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_committed_notebook_carries_the_outputs_of_one_run(path: Path):
    nb = nbformat.read(path, as_version=4)
    counts = [cell.execution_count for cell in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), "execute the notebook top to bottom once before committing"
    errors = [cell.id for cell in code_cells(nb) for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"committed outputs hold errors in cells {errors}"
    assert DEVICE_LINE.match(first_output_line(nb)), "the first output must be sg.describe_device()'s line"
    for name in saved_figure_names(nb):
        for suffix in (".png", ".svg"):
            assert (PROJECT_ROOT / "figures" / f"{name}{suffix}").is_file(), f"figures/{name}{suffix} is not there"


def quick_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The quick switch on, figures and caches in temporary folders (the committed figures stay as they are); the
    figures folder."""
    figures = tmp_path / "figures"
    monkeypatch.setenv("SHAKEGPT_SMOKE", "1")
    monkeypatch.setenv("SHAKEGPT_FIGURES_DIR", str(figures))
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path / "cache"))
    return figures


def client_for(nb: nbformat.NotebookNode, path: Path):
    return nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(path.parent)}}
    )


def assert_ran(nb: nbformat.NotebookNode, figures: Path, verdict: str) -> None:
    """The device line first, every figure saved, and every exercise's check printing `verdict`."""
    assert DEVICE_LINE.match(first_output_line(nb)), "the first output must be sg.describe_device()'s line"
    for name in saved_figure_names(nb):
        for suffix in (".png", ".svg"):
            assert (figures / f"{name}{suffix}").stat().st_size > 0, f"{name}{suffix} was not saved"
    printed = "".join(output_texts(nb))
    for n in range(1, len(exercises(nb)) + 1):
        assert f"Exercise {n}: {verdict}" in printed, f"exercise {n}'s check did not print {verdict!r}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    figures = quick_mode(tmp_path, monkeypatch)
    nb = nbformat.read(path, as_version=4)
    client_for(nb, path).execute()  # raises CellExecutionError, naming the cell, on the first error
    assert_ran(nb, figures, "not done yet.")


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_run_in_smoke_mode_and_wrong_answers_fail(path: Path, tmp_path: Path, monkeypatch):
    """The solutions notebook top to bottom, every check printing "correct." And before each solution, each plausible
    wrong answer of tests/exercise_mutants.py in its place: the exercise's check must then fail."""
    figures = quick_mode(tmp_path, monkeypatch)
    nb = nbformat.read(path, as_version=4)
    mutants = MUTANTS[path.name[:2]]
    client = client_for(nb, path)
    answers = {nb.cells.index(cell) + 1: number for number, cell in enumerate(exercise_headings(nb), start=1)}
    passed_wrongly = []
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if index in answers:
                check = nb.cells[index + 1]
                for wrong in mutants[answers[index]]:
                    client.execute_cell(nbformat.v4.new_code_cell(wrong), index)
                    try:
                        client.execute_cell(nbformat.v4.new_code_cell(check.source), index + 1)
                    except nbclient.exceptions.CellExecutionError:
                        continue
                    passed_wrongly.append(f"exercise {answers[index]}:\n{wrong}")
            client.execute_cell(cell, index)
    assert not passed_wrongly, "checks that let a wrong answer pass:\n" + "\n".join(passed_wrongly)
    assert set(mutants) == set(answers.values()), "tests/exercise_mutants.py must hold wrong answers for every exercise"
    assert_ran(nb, figures, "correct.")


# What each rung's cell of notebook 05 must hold and run: the PyTorch line(s) that rung changes.
RUNG_LINES = {
    "TF32": ["torch.backends.cuda.matmul.allow_tf32 = True"],
    "autocast": ["torch.autocast("],
    "SDPA attention": ["F.scaled_dot_product_attention(", 'attn_impl="sdpa"'],
    "torch.compile": ["torch.compile"],
    "chunked cross-entropy": ['loss_impl="chunked"'],
    "vocab 50304": ["PADDED_VOCAB_SIZE"],
    "fused AdamW": ["torch.optim.AdamW(", "fused=True"],
    "gradient accumulation": ["grad_accum = GRAD_ACCUM"],
    "Muon": ["torch.optim.Muon(", "sg.MuonWithAdamW("],
}
JARGON = re.compile(r"\bsmoke\b|\bCI\b|these machines", flags=re.I)
MAX_NOTEBOOK_BYTES = 300_000
MAX_CODE_LINES = 40


def test_every_rung_cell_holds_and_passes_the_lines_it_changes():
    from shakegpt.bench.rungs import ladder_rungs

    cells = code_cells(nbformat.read(NOTEBOOK_DIR / "05_optimizations.ipynb", as_version=4))
    names = [rung.name for rung in ladder_rungs(1, 2)]
    assert set(RUNG_LINES) == set(names) - {"fp32 baseline"}
    for name, lines in RUNG_LINES.items():
        climbs = [cell.source for cell in cells if f'ladder.climb("{name}", ' in cell.source]
        assert len(climbs) == 1, f"one cell must pass its own code to ladder.climb({name!r}, ...)"
        for line in lines:
            assert line in climbs[0], f"the {name!r} cell must hold {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_markdown_speaks_to_a_learner(path: Path):
    """No jargon of the course's tooling in the prose (inline code, such as `SHAKEGPT_SMOKE=1`, is code)."""
    nb = nbformat.read(path, as_version=4)
    prose = [re.sub(r"`[^`]*`", "", cell.source) for cell in nb.cells if cell.cell_type == "markdown"]
    found = [match.group() for text in prose for match in JARGON.finditer(text)]
    assert not found, f"the markdown says {found}: write for a learner (the quick mode, the tests)"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_notebook_sizes(path: Path):
    """At most 300 KB on disk (a progress bar leaves one line, not a redraw per step) and no code cell over 40 lines
    (drawing code lives in the package)."""
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.stat().st_size:,} bytes"
    long = [(cell.id, len(cell.source.splitlines())) for cell in code_cells(nbformat.read(path, as_version=4))]
    assert [(cell, n) for cell, n in long if n > MAX_CODE_LINES] == []
