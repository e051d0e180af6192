"""End to end: the smoke profile's `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REPORT_FILES = [
    "results.md", "results.tex", "results.csv", "paper_vs_here.md", "ablation.md",
    "ablation.csv", "summary.json", "complexity.csv", "complexity.json", "speed.csv",
    "figures/sisdri_vs_macs.png", "figures/training_curves.png", "figures/ablation_heatmap.png",
]


def _project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    return [f for f in listed if f and (REPO / f).is_file() and not f.startswith("reports/")]


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    """A copy of the project (sources only, no reports) with profile smoke, as a git repo."""
    root = tmp_path_factory.mktemp("repo")
    for rel in _project_files():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A committed repo, as a user's clone is (DVCLive reads HEAD).
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "smoke copy"], cwd=root, check=True)
    return root


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(root)
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_profile_repro_writes_every_report(smoke_repo: Path) -> None:
    run = _dvc(smoke_repo, "repro")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    # every stage came from the preload server (experiments.launch), none fell back
    assert "launcher:" not in run.stdout + run.stderr, run.stderr[-4000:]
    reports = smoke_repo / "reports"
    for rel in REPORT_FILES:
        path = reports / rel
        assert path.is_file() and path.stat().st_size > 0, f"missing report {rel}"

    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    results = pd.read_csv(reports / "results.csv")
    assert list(results["model"]) == params["models"]
    for column in ("si_sdri_db", "sdri_db", "params_m", "macs_g_per_s", "rtf"):
        assert results[column].map(math.isfinite).all(), column
    # Sane ranges: an untrained-to-short-trained model sits within +-60 dB; sizes as published.
    assert results["si_sdri_db"].abs().lt(60).all()
    assert results["params_m"].between(0.5, 40).all()
    assert (results["macs_g_per_s"] > 0).all() and (results["rtf"] > 0).all()

    grid = params["ablation"]
    ablation = pd.read_csv(reports / "ablation.csv")
    assert len(ablation) == len(grid["num_scales"]) * len(grid["d_state"]) * len(grid["ssm"])
    assert ablation["si_sdri_db"].map(math.isfinite).all()

    markdown = (reports / "results.md").read_text()
    assert "| commit |" in markdown and "| profile | smoke |" in markdown
    assert (reports / "figures/sisdri_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((reports / "summary.json").read_text())["profile"] == "smoke"

    metrics = _dvc(smoke_repo, "metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr


@pytest.mark.slow
def test_second_repro_reruns_nothing(smoke_repo: Path) -> None:
    status = _dvc(smoke_repo, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout or "{}") == {}, status.stdout
