"""experiments.stages.dispatch on a temporary smoke-profile copy with a shrunk grid (2 models,
1 ablation cell): the local executor (separate processes, a killed task reported and rerun),
a real SLURM when one answers, and sharing results through a DVC remote on a local folder.

The tests of this module run in order on one copy (each needs the previous one's results)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODELS = ["s4m_tiny", "convtasnet"]
CELL = "ablate@3-8-s4d"
GLOBAL_CELL = "ablate_global@none"  # the global-layer axis, dispatched as an ablation cell
DISPATCHED = [*(f"train@{m}" for m in MODELS), *(f"evaluate@{m}" for m in MODELS), CELL,
              GLOBAL_CELL]
ABLATIONS = ("ablate", "ablate_global")
pytestmark = pytest.mark.slow  # real stage processes: 9 smoke stages, a minute each here
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def _run(root: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # no venv on PATH: dispatched jobs must find the project's interpreter by themselves
    return subprocess.run(list(cmd), cwd=root, capture_output=True, text=True, timeout=timeout)


def _dispatch(root: Path, *args: str) -> subprocess.CompletedProcess:
    run = _run(root, sys.executable, "-m", "experiments.stages.dispatch", *args)
    print(run.stdout[-3000:], run.stderr[-3000:])
    return run


def _status(root: Path, *targets: str) -> dict:
    run = _run(root, str(BIN / "dvc"), "status", "--json", *targets)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout or "{}")


@pytest.fixture(scope="module")
def grid_repo(tmp_path_factory, copy_project) -> Path:
    """The project with profile smoke and a 2-model, 1-cell grid, prepared (data and MAC counts)
    and committed."""
    root = tmp_path_factory.mktemp("grid")
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["models"] = MODELS
    params["ablation"].update(num_scales=[3], d_state=[8], ssm=["s4d"], global_layers=["none"],
                              global_at={"num_scales": 3, "d_state": 8})
    params["cluster"].update(cpus_per_task=1, mem_gb=2, array_parallelism=2, timeout_min=10,
                             stages={})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "grid copy"], cwd=root, check=True)
    prepare = _run(root, sys.executable, "-m", "experiments.stages.prepare")
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    commit = _run(root, str(BIN / "dvc"), "commit", "-f", "prepare")
    assert commit.returncode == 0, commit.stderr
    # training budgets read MACs from reports/complexity.csv: computed on the login node first
    activated = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    complexity = subprocess.run([str(BIN / "dvc"), "repro", "complexity"], cwd=root, env=activated,
                                capture_output=True, text=True, timeout=600)
    assert complexity.returncode == 0, complexity.stdout[-3000:] + complexity.stderr[-3000:]
    return root


def _stage_names(root: Path) -> set[str]:
    return {json.loads(p.read_text())["name"]
            for p in (root / "runs/_dispatch/stages").glob("*.json")}


def test_dry_run_prints_arrays_and_submits_nothing(grid_repo: Path) -> None:
    run = _dispatch(grid_repo, "--dry-run", "-S", "partition=short", "-S",
                    "stages.train.timeout_min=7")
    assert run.returncode == 0, run.stderr
    assert "train: job array of 2 task(s)" in run.stdout
    assert "evaluate: job array of 2 task(s)" in run.stdout
    assert "ablate: job array of 2 task(s)" in run.stdout
    cmd = "python -m experiments.stages.train --model convtasnet --out runs/convtasnet"
    assert cmd in run.stdout
    assert "#SBATCH --array=0-1%2" in run.stdout and "#SBATCH --partition=short" in run.stdout
    assert "#SBATCH --time=7" in run.stdout and "#SBATCH --time=10" in run.stdout
    assert not (grid_repo / "runs/_dispatch/stages").exists()


def test_local_dispatch_kill_collect_and_rerun(grid_repo: Path) -> None:
    assert set(_status(grid_repo)) >= set(DISPATCHED)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "experiments.stages.dispatch", "--executor",
                             "local"], cwd=grid_repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # kill convtasnet's training (its process group: shell and interpreter) once it runs
    outcomes = grid_repo / "runs/_dispatch/outcomes"
    killed = None
    while killed is None and time.monotonic() - started < 300:
        for path in outcomes.glob("*.json") if outcomes.is_dir() else []:
            outcome = json.loads(path.read_text())
            if outcome["stage"] == "train@convtasnet" and outcome["state"] == "running":
                os.killpg(outcome["pid"], signal.SIGKILL)
                killed = outcome
        time.sleep(0.2)
    assert killed is not None, "train@convtasnet never started"
    log, _ = proc.communicate(timeout=600)
    print(log[-4000:])
    assert proc.returncode == 0, log[-4000:]
    assert _stage_names(grid_repo) == set(DISPATCHED)
    # separate processes: every stage ran under its own submitit job (a local pid)
    records = [json.loads(p.read_text()) for p in (grid_repo / "runs/_dispatch/stages").iterdir()]
    assert len({r["job_id"] for r in records}) == len(DISPATCHED)

    collected = _dispatch(grid_repo, "--collect")
    assert collected.returncode == 1  # failed tasks
    out = collected.stdout
    assert "train@convtasnet: FAILED" in out and "killed by SIGKILL" in out
    assert "evaluate@convtasnet: FAILED" in out and "upstream train@convtasnet" in out
    log_path = next(line.split(", log ")[1].split(",")[0] for line in out.splitlines()
                    if line.startswith("train@convtasnet: FAILED"))
    assert (grid_repo / log_path).is_file()
    ok = ["train@s4m_tiny", "evaluate@s4m_tiny", CELL, GLOBAL_CELL]
    for name in ok:
        assert f"{name}: committed" in out
    assert _status(grid_repo, *ok) == {}
    assert set(_status(grid_repo, "train", "evaluate")) == {"train@convtasnet",
                                                           "evaluate@convtasnet"}

    rerun = _dispatch(grid_repo, "--executor", "local", "--wait", "--collect")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    submitted = {line.split()[1] for line in rerun.stdout.splitlines()
                 if line.strip().startswith("submitted ")}
    assert submitted == {"train@convtasnet", "evaluate@convtasnet"}
    assert _status(grid_repo, "train", "evaluate", *ABLATIONS) == {}
    assert json.loads((grid_repo / "reports/eval/convtasnet/summary.json").read_text())

    again = _dispatch(grid_repo, "--executor", "local")
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    print(f"local dispatch test: {time.monotonic() - started:.0f} s")


@pytest.fixture
def dispatched_grid(grid_repo: Path) -> Path:
    """grid_repo with every dispatched stage done: by the local dispatch test when it ran
    first, otherwise by a local dispatch here, so that each later test also runs alone."""
    if _status(grid_repo, "train", "evaluate", *ABLATIONS):
        run = _dispatch(grid_repo, "--executor", "local", "--wait", "--collect")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return grid_repo


def _slurm_or_skip() -> None:
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                               timeout=20)
        reason = None if probe.returncode == 0 else probe.stderr.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        reason = str(err)
    if reason is None:
        return
    message = f"SLURM not running: sinfo failed ({reason}); start it with tools/slurm_setup.sh"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run this test)")
    pytest.skip(message)


def test_slurm_dispatch_job_arrays(dispatched_grid: Path) -> None:
    _slurm_or_skip()
    grid_repo = dispatched_grid
    # both trainings pending again (model.pt gone); they resume from their last.ckpt
    for model in MODELS:
        (grid_repo / f"runs/{model}/model.pt").unlink()
    pending = {*(f"train@{m}" for m in MODELS), *(f"evaluate@{m}" for m in MODELS)}
    assert set(_status(grid_repo, "train", "evaluate", *ABLATIONS)) == pending
    started = time.monotonic()
    run = _dispatch(grid_repo, "--executor", "slurm", "--wait", "--collect")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "evaluate: job array of 2 task(s), after afterany:" in run.stdout
    records = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
               for p in (grid_repo / "runs/_dispatch/stages").iterdir()}
    for name in pending:
        assert records[name]["executor"] == "slurm"
        assert f"{name}: committed" in run.stdout
    scripts = [p.read_text() for p in (grid_repo / "runs/_dispatch").rglob("*submission.sh")]
    assert sum("#SBATCH --array=0-1%2" in text for text in scripts) >= 2  # train, evaluate
    for model in MODELS:
        assert json.loads((grid_repo / f"runs/{model}/train_metrics.json").read_text())["resumed"]
    assert _status(grid_repo, "train", "evaluate", *ABLATIONS) == {}
    print(f"slurm dispatch test: {time.monotonic() - started:.0f} s")


def _git(root: Path, *args: str) -> None:
    subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True)


def test_remote_push_pull_shares_cached_results(dispatched_grid: Path, tmp_path: Path) -> None:
    """A lab pushes to a DVC remote on a shared folder; a fresh clone pulls the cached outputs
    (data, models, metrics, curves, evaluation examples) and finds every dispatched stage up to
    date; only resume checkpoints (not outputs) stay behind."""
    grid_repo, dvc = dispatched_grid, str(BIN / "dvc")
    remote = tmp_path / "remote"
    for cmd in (["remote", "add", "-d", "shared", str(remote)], ["push"]):
        run = _run(grid_repo, dvc, *cmd)
        assert run.returncode == 0, run.stderr
    _git(grid_repo, "add", "-A")
    _git(grid_repo, "commit", "-qm", "results and remote")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(grid_repo), str(clone)], check=True)
    pull = _run(clone, dvc, "pull")
    assert pull.returncode == 0, pull.stderr
    for rel in ["runs/s4m_tiny/model.pt", "runs/convtasnet/model.pt", "data/prepared"]:
        assert (clone / rel).exists(), rel
    for model in MODELS:
        rel = f"runs/{model}/model.pt"
        assert (clone / rel).read_bytes() == (grid_repo / rel).read_bytes()
    # every output of the dispatched stages is in git or in the remote: nothing to rerun
    assert _status(clone, "prepare", "train", "evaluate", *ABLATIONS) == {}
    for model in MODELS:
        rel = f"reports/eval/{model}/summary.json"
        assert (clone / rel).read_text() == (grid_repo / rel).read_text()
