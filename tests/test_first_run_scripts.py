"""scripts/serve's first run says what it installs before the minute it takes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import PROJECT


def test_the_first_run_says_what_it_installs(tmp_path: Path) -> None:
    # A copy of the scripts in a project without .venv, and a python3 that only says it ran:
    # nothing is installed, the message is what is checked.
    (tmp_path / "scripts").mkdir()
    for name in ("setup", "serve"):
        shutil.copy(PROJECT / "scripts" / name, tmp_path / "scripts" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\necho python3 \"$@\" >&2\nexit 3\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "serve")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    first, _, rest = done.stderr.partition("\n")
    assert "First run" in first and "installing" in first and "PyPI" in first
    assert "python3 -m venv .venv" in rest  # said before the work, not after
    assert done.returncode != 0
