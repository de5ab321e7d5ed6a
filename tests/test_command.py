"""The one exit-code definition and the one runner every command ends through."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device.command import Exit, error_message, run_command

ROOT = Path(__file__).resolve().parents[1]


def _readme_exit_table() -> tuple[list[int], list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Exit codes"):]
    header = next(line for line in section.splitlines() if line.startswith("| command |"))
    codes = [int(c) for c in re.findall(r"\|\s*(\d+)\s*(?=\|)", header)]
    lines = section.splitlines()[section.splitlines().index(header) + 2:]
    rows = lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    return codes, rows


def test_readme_table_is_the_enum():
    codes, rows = _readme_exit_table()
    assert codes == sorted(int(e) for e in Exit)
    assert rows and all(line.count("|") == len(codes) + 2 for line in rows)


def test_every_command_main_ends_through_the_runner():
    """No command returns a bare exit number: each main goes through run_command / Exit."""
    bare = re.compile(r"^\s+return (1|2|3|130|143)\s*$", re.M)
    offenders = [str(p.relative_to(ROOT)) for folder in ("train", "export", "bench", "device")
                 for p in (ROOT / folder).glob("*.py") if bare.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_bad_input_and_os_errors_are_one_line(capsys):
    def missing():
        open("/nonexistent/skyedge/file.csv")

    assert run_command(missing) == Exit.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: /nonexistent/skyedge/file.csv: No such file or directory")
    assert err.count("\n") == 1 and "Traceback" not in err

    def bad():
        raise ValueError("--threads 0: expected an integer >= 1")

    assert run_command(bad, (ValueError,)) == Exit.BAD_INPUT
    assert capsys.readouterr().err == "error: --threads 0: expected an integer >= 1\n"
    assert error_message(KeyError("no backbone 'x'")) == "no backbone 'x'"


def test_unlisted_errors_still_raise():
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 / 0, (ValueError,))


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """SIGTERM (scancel, a time limit) runs the same cleanup as Ctrl-C and exits 143."""
    marker = tmp_path / "cleaned"
    code = (f"import sys, time\nfrom device.command import run_command\n"
            f"def work():\n    try:\n        print('ready', flush=True); time.sleep(60)\n"
            f"    finally:\n        open({str(marker)!r}, 'w').write('yes')\n"
            f"sys.exit(run_command(work, interrupted='finished work is kept'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.TERMINATED == 143
    assert "terminated (SIGTERM): finished work is kept" in err and "Traceback" not in err
    assert marker.read_text() == "yes"
