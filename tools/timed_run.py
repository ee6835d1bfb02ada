"""Commands run within a time limit, for tools/gpu_check.py: each in its own process group, its output into a log,
SIGINT when time is nearly up (a training run then writes its summary) and SIGKILL to what is left of the group (compile
workers would hold the GPU); pytest the same way, with the counts of its JUnit report."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
GRACE_S = 10.0  # an over-time command gets SIGINT this long before its limit, SIGKILL at it
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
Findings = tuple[dict, list[str]]  # what a check measured, and what it found wrong (nothing: PASS)


def run_limited(command: list[str], log_path: Path, limit_s: float, result: Path | None = None, **env: str) -> Findings:
    """Run `command` unbuffered in its own process group, its output into `log_path`, stopped before `limit_s`; and
    why it left no `result` file if it did not (its last line, its log's name)."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(1.0, limit_s - GRACE_S))
        finally:  # over time or interrupted: SIGINT, then SIGKILL
            cut = process.poll() is None
            for sig in (signal.SIGINT, signal.SIGKILL) if cut else ():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=GRACE_S if sig == signal.SIGINT else None)
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    measured = dict(returncode=process.returncode, wall_s=time.perf_counter() - started, time_limit_s=limit_s,
                    cut_by_time_limit=cut, last_line=lines[-1] if lines else "")  # fmt: skip
    if result is None or result.is_file():
        return measured, []
    why = "cut by the time limit" if measured["cut_by_time_limit"] else f"exit status {measured['returncode']}"
    return measured, [f"no {result.name} ({why}): {measured['last_line']} (see {log_path.name})"]


def run_pytest(command: list[str], junit: Path, limit_s: float, **env: str) -> Findings:
    """`command` (pytest) writing `junit`: some test ran and none failed; pytest's last lines kept if not."""
    with tempfile.TemporaryDirectory(prefix="shakegpt-tests-") as scratch:  # only the log's tail comes back
        log = Path(scratch) / "pytest.log"
        measured, problems = run_limited([*command, f"--junitxml={junit}"], log, limit_s, junit, **env)
        tail = log.read_text(errors="replace").splitlines()[-40:]
    if not problems:
        suite = ElementTree.parse(junit).getroot().find("testsuite")
        measured.update({key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")})
        if measured["returncode"] == 0 and measured["tests"]:  # and pytest selected some test
            return measured, []
        problems = [f"pytest ended with status {measured['returncode']}: {measured['last_line']}"]
    return {**measured, "log_tail": tail}, problems
