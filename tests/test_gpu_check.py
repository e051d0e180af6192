"""tools/gpu_check.py on the CPU with tiny models (issue 12, item 4), and tools/setup_env.sh's
interpreter check (item 5)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.registry import REGISTRY
from tools.gpu_check import main

REPO = Path(__file__).resolve().parents[1]


def test_cpu_run_of_the_check_passes_for_every_model() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("gpu_check on cpu", 1)[1]
    for name in list(REGISTRY):
        for check in ("train+eval 32-true", "train+eval bf16-mixed", "speed"):
            row = re.search(rf"^{name}\s+{re.escape(check)}\s+(\S+)\s+\S+\s+(.*)$", table, re.M)
            assert row and row.group(1) == "ok", f"{name} {check}: {row and row.group(0)}"
        assert re.search(rf"^{name}\s+train\+eval bf16-mixed .*loss [\d.]+ -> [\d.]+ in 4 "
                         r"steps; SI-SDR -?[\d.]+ dB", table, re.M)
    assert re.search(r"^s4m_tiny\s+ddp x2\s+skip", table, re.M)
    assert "0 failed" in table


def test_a_failing_check_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    # one step: the loss cannot have fallen
    assert main(["--device", "cpu", "--tiny", "--models", "convtasnet", "--steps", "1"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^convtasnet\s+train\+eval 32-true\s+FAIL .*loss not falling", out, re.M)


def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("a CUDA device is present")
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_setup_names_an_interpreter_older_than_3_11(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "setup_env.sh", tmp_path / "tools")
    shutil.copy(REPO / "requirements.lock", tmp_path)
    old = tmp_path / "python3.10"  # answers the script's two questions as a Python 3.10 would
    old.write_text('#!/bin/sh\ncase "$2" in *version_info*) exit 1;; '
                   '*version.split*) echo 3.10.14;; esac\n')
    old.chmod(0o755)
    proc = subprocess.run(["bash", "tools/setup_env.sh"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": str(old)}, timeout=60)
    assert proc.returncode == 1
    assert f"Python >= 3.11 is required, but {old}" in proc.stderr and "3.10.14" in proc.stderr
    assert not (tmp_path / ".venv").exists()
