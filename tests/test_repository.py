"""The course's one address: pyproject.toml's [project.urls] holds it, every file that must spell it out (the Colab
set-up cells, the badges, the Space's README) spells it the same, and a set-up cell that cannot clone says in one line
what to do instead of waiting at git's prompt."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from shakegpt.basics import PROJECT_ROOT, repository_url

# A GitHub address of this course, written out or inside a Colab badge ("colab.research.google.com/github/OWNER/NAME").
COURSE_ADDRESS = re.compile(r"(?:https://github\.com/|colab\.research\.google\.com/github/)([\w.-]+/shakegpt)\b")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".cff", ".txt", ".sh", ".cfg"}


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return [PROJECT_ROOT / name for name in listed.stdout.splitlines() if Path(name).suffix in TEXT_SUFFIXES]


def test_pyproject_holds_the_address():
    with (PROJECT_ROOT / "pyproject.toml").open("rb") as file:
        urls = tomllib.load(file)["project"]["urls"]
    assert repository_url() == urls["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/shakegpt", repository_url())


def test_every_file_spells_the_address_as_pyproject_does():
    expected = repository_url().removeprefix("https://github.com/")
    found = {}
    for path in tracked_text_files():
        if path.resolve() == Path(__file__).resolve() or not path.is_file():
            continue
        for match in COURSE_ADDRESS.finditer(path.read_text(errors="replace")):
            found.setdefault(match.group(1), set()).add(str(path.relative_to(PROJECT_ROOT)))
    assert set(found) == {expected}, {name: sorted(paths)[:5] for name, paths in found.items() if name != expected}
    notebooks = {name for name in found[expected] if name.endswith(".ipynb")}
    assert len(notebooks) == len(list((PROJECT_ROOT / "notebooks").rglob("[0-9][0-9]_*.ipynb")))
    assert "space/README.md" in found[expected]


def test_citation_and_licence_agree_with_pyproject():
    """CITATION.cff (Citation File Format 1.2.0) cites the version, licence and address pyproject.toml declares, and
    LICENSE holds the MIT licence that pyproject names."""
    with (PROJECT_ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    citation = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"].startswith("ShakeGPT")
    assert citation["authors"] == [{"name": "The ShakeGPT authors"}]
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"]["text"] == "MIT"
    assert citation["repository-code"] == project["urls"]["Repository"] == repository_url()
    assert citation["abstract"] == project["description"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(citation["date-released"]))

    licence = (PROJECT_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 The ShakeGPT authors\n\n")
    text = " ".join(licence.split())
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy of this software" in text
    assert "The above copyright notice and this permission notice shall be included in all copies" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


@pytest.fixture
def git_server_that_asks_for_a_password(monkeypatch: pytest.MonkeyPatch):
    """A loopback HTTP server that answers every request with 401, as GitHub does for a private or misspelt
    repository: git then asks for a user name, unless told not to."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    class AskForPassword(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AskForPassword)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/someone/shakegpt"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(Path("/content/shakegpt").exists(), reason="this machine has a /content/shakegpt")
def test_a_set_up_cell_that_cannot_clone_says_what_to_do(git_server_that_asks_for_a_password, tmp_path):
    """The set-up cell, run as on Colab (a google.colab module present) with an address that asks for a password
    and a terminal that git could prompt on: it stops at once with one line, and clones nothing."""
    cell = nbformat.read(PROJECT_ROOT / "notebooks" / "00_setup.ipynb", as_version=4)
    source = next(c.source for c in cell.cells if c.cell_type == "code")
    url = git_server_that_asks_for_a_password
    source = re.sub(r'^REPO_URL = "[^"]+"', f'REPO_URL = "{url}"', source, flags=re.M)
    script = f"import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n{source}\n"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Could not clone {url} (fatal: ")
    assert line.endswith("set REPO_URL to an address you can clone, or upload the course folder as "
                         "/content/shakegpt, then run this cell again.")  # fmt: skip
    assert "terminal prompts disabled" in line  # git would have asked for a user name
    assert not Path("/content/shakegpt").exists()
