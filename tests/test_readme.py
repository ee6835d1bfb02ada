"""The README's two set-up commands are the ones CI runs and the command line accepts."""

from __future__ import annotations

import re
from pathlib import Path

from shakegpt.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def setup_section() -> str:
    return ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]


def setup_commands() -> list[str]:
    """The code blocks of the README's Set-up section."""
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup_section(), flags=re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    main_command, test_command = setup_commands()
    assert main_command.startswith("pip install -e . && python -m shakegpt_utils train")
    assert "pytest" in test_command
    ci_lines = ROOT.joinpath(".ci/run").read_text().splitlines()
    assert test_command in ci_lines
    assert "pip install -q torch==2.13.0" in ci_lines


def test_the_uv_set_up_runs_the_same_two_commands():
    """The set-up with uv: its environment, then each command with `uv pip install` where the other says `pip install`
    (so a change to the two commands shows here until the uv line follows)."""
    prose = " ".join(setup_section().split())  # a command may wrap across lines of the paragraph
    assert "`uv venv && source .venv/bin/activate`" in prose
    for command in setup_commands():
        assert command.startswith("pip install ")
        assert f"`uv {command}`" in prose


def test_the_main_command_parses():
    args = build_parser().parse_args(setup_commands()[0].split("python -m shakegpt_utils ", 1)[1].split())
    assert args.command == "train"


def test_readme_lists_every_notebook():
    readme = ROOT.joinpath("README.md").read_text()
    notebooks = sorted(p.name for p in ROOT.joinpath("notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks found"
    for name in notebooks:
        assert f"(notebooks/{name})" in readme
        assert f"(notebooks/solutions/{name[:2]}_solutions.ipynb)" in readme


def test_readme_shows_the_space_files_as_they_are():
    readme = ROOT.joinpath("README.md").read_text()
    front_matter = ROOT.joinpath("space/README.md").read_text().split("---\n")[1]
    assert f"```yaml\n---\n{front_matter}---\n```" in readme
    assert f"```text\n{ROOT.joinpath('space/requirements.txt').read_text()}```" in readme
