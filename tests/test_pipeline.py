"""End to end: the README's `make repro`, unchanged, in a fresh copy of the project, from a shell
stripped as a new user's is (no venv on PATH, no PYTHONPATH, no VIRTUAL_ENV), on the smoke
profile with a smaller grid (3 models, 2 ablation cells)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ["s4m_tiny", "convtasnet", "sepformer"]
REPORT_FILES = [
    "results.md", "results.tex", "results.csv", "paper_vs_here.md", "ablation.md",
    "ablation.csv", "summary.json", "complexity.csv", "complexity.json", "speed.csv",
    "figures/sisdri_vs_macs.png", "figures/training_curves.png", "figures/ablation_heatmap.png",
    "speed_vs_length.csv", "figures/speed_vs_length.png",
]
# What a login shell on a fresh machine has: the system directories only.
PLAIN_ENV = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin",
             "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory, copy_project) -> Path:
    """A committed copy of the project (sources only, no reports), profile smoke, smaller grid,
    with this checkout's .venv linked in so that `make`'s setup step finds it installed."""
    root = tmp_path_factory.mktemp("repo")
    copy_project(root)
    (root / ".venv").symlink_to(REPO / ".venv")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["models"] = MODELS
    params["ablation"].update(num_scales=[3], d_state=[8], ssm=["s4", "s4d"],
                              global_layers=["none"], global_at={"num_scales": 3, "d_state": 8})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "smoke copy"], cwd=root, check=True)
    return root


def _plain(root: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=root, env=PLAIN_ENV, capture_output=True, text=True,
                          timeout=1800, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_make_repro_from_a_plain_shell_writes_every_report(smoke_repo: Path) -> None:
    run = _plain(smoke_repo, "make", "repro")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    reports = smoke_repo / "reports"
    for rel in REPORT_FILES:
        path = reports / rel
        assert path.is_file() and path.stat().st_size > 0, f"missing report {rel}"

    results = pd.read_csv(reports / "results.csv")
    assert list(results["model"]) == MODELS
    for column in ("si_sdri_db", "sdri_db", "params_m", "macs_g_per_s", "rtf"):
        assert results[column].map(math.isfinite).all(), column
    # Sane ranges: an untrained-to-short-trained model sits within +-60 dB; sizes as published.
    assert results["si_sdri_db"].abs().lt(60).all()
    assert results["params_m"].between(0.5, 40).all()
    assert (results["macs_g_per_s"] > 0).all() and (results["rtf"] > 0).all()

    ablation = pd.read_csv(reports / "ablation.csv")
    assert sorted(zip(ablation["num_scales"], ablation["d_state"], ablation["ssm"],
                      ablation["global_layer"], strict=True)) == [
        (3, 8, "s4", "none"), (3, 8, "s4", "s4"), (3, 8, "s4d", "s4d")]
    assert ablation["si_sdri_db"].map(math.isfinite).all()

    markdown = (reports / "results.md").read_text()
    assert "| commit " in markdown and "smoke" in markdown
    assert (reports / "figures/sisdri_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((reports / "summary.json").read_text())["profile"] == "smoke"

    # The same commit again reruns nothing; `dvc` typed by hand after activating works too.
    again = _plain(smoke_repo, "make", "repro")
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout, again.stdout
    activated = {**PLAIN_ENV, "PATH": f"{smoke_repo / '.venv/bin'}:{PLAIN_ENV['PATH']}",
                 "VIRTUAL_ENV": str(smoke_repo / ".venv")}
    status = subprocess.run(["dvc", "status", "--json"], cwd=smoke_repo, env=activated,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    metrics = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=smoke_repo, env=activated,
                             capture_output=True, text=True)
    assert metrics.returncode == 0, metrics.stderr
