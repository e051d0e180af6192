"""Submitting the pending stages (one job array per stage kind), waiting, and collecting."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.dispatch import plan
from experiments.dispatch.cluster import kind_settings, make_executor, sbatch_lines
from experiments.dispatch.task import (
    DISPATCH_DIR,
    StageTask,
    read_records,
    state,
    write_record,
)

ACTIVE = ("queued", "running")


def _spec(root: Path, stage: plan.StageSpec, executor: str, after: dict[str, str]) -> dict:
    return {"name": stage.name, "cmd": list(stage.cmd), "wdir": stage.wdir, "root": str(root),
            "token": uuid.uuid4().hex, "executor": executor, "after": after,
            # the venv's bin folder, unresolved: its python is the project's environment
            "bin_dir": str(Path(sys.executable).parent),
            "shell": os.environ.get("SHELL") or "/bin/sh"}


def dispatch(root: Path, executor: str, settings: dict[str, Any], dry_run: bool = False,
             wait: bool = False, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Submits every pending train/evaluate/ablate stage (one job array per kind; evaluations
    depend on the trainings of this dispatch). Stages whose earlier submission is still queued
    or running are left alone. Returns the submission records; waits for the jobs with `wait`
    (always with the local and debug executors, which run on this machine)."""
    records = read_records(root)
    stages = []
    for stage in plan.pending(root):
        previous = records.get(stage.name)
        if previous and state(root, previous)[0] in ACTIVE:
            out(f"{stage.name}: already {state(root, previous)[0]} as job {previous['job_id']}")
            continue
        stages.append(stage)
    if not stages:
        out("dispatch: nothing to submit (every train/evaluate/ablate stage is up to date or "
            "already submitted)")
        return []
    log_root = root / DISPATCH_DIR
    submitted: dict[str, dict[str, Any]] = {}
    for kind in plan.KINDS:
        group = [s for s in stages if s.kind == kind]
        if not group:
            continue
        cfg = kind_settings(settings, kind)
        # an evaluation waits for this dispatch's (or a still running earlier) training
        upstream = {u: submitted.get(u) or records.get(u) for s in group for u in s.upstream}
        upstream = {u: r for u, r in upstream.items()
                    if r and (u in submitted or state(root, r)[0] in ACTIVE)}
        array_ids = sorted({r["job_id"].split("_")[0] for r in upstream.values()})
        dependency = f"afterany:{':'.join(array_ids)}" if array_ids else None
        specs = [_spec(root, s, executor, {u: upstream[u]["token"] for u in s.upstream
                                            if u in upstream}) for s in group]
        out(f"{kind}: job array of {len(group)} task(s)"
            + (f", after {dependency}" if dependency and executor == "slurm" else ""))
        for spec in specs:
            out(f"  {spec['name']}: {' && '.join(spec['cmd'])}")
        if dry_run:
            ex = make_executor("slurm", log_root, cfg, dependency)
            for line in sbatch_lines(ex, len(specs)):
                out(f"  {line}")
            continue
        for spec, job in _submit(executor, log_root, cfg, dependency, specs):
            record = {k: spec[k] for k in ("name", "cmd", "token", "executor")} | {
                "kind": kind, "job_id": str(job.job_id), "submitted": time.time(),
                "log_dir": str(Path(job.paths.folder).relative_to(root)),
                "stdout": str(Path(job.paths.stdout).relative_to(root))}
            write_record(root, record)
            submitted[spec["name"]] = record
            out(f"  submitted {spec['name']} as job {job.job_id} (logs: {record['log_dir']})")
    if wait and not dry_run:
        wait_for(root, list(submitted.values()), out)
    return list(submitted.values())


def _submit(executor: str, log_root: Path, cfg: dict[str, Any], dependency: str | None,
            specs: list[dict]) -> list[tuple[dict, Any]]:
    if executor == "slurm":
        ex = make_executor(executor, log_root, cfg, dependency)
        return list(zip(specs, ex.map_array(StageTask(), specs), strict=True))
    # On this machine: at most array_parallelism stages at once, each batch awaited.
    jobs = []
    step = max(1, int(cfg["array_parallelism"]))
    for start in range(0, len(specs), step):
        ex = make_executor(executor, log_root, cfg)
        batch = list(zip(specs[start:start + step],
                         ex.map_array(StageTask(), specs[start:start + step]), strict=True))
        for _, job in batch:
            job.exception()  # waits; a failure is in the task's outcome and its log
        jobs += batch
    return jobs


def wait_for(root: Path, records: list[dict[str, Any]], out: Callable[[str], None] = print,
             poll_s: float = 5.0) -> None:
    """Returns once no submitted task is queued or running."""
    while True:
        active = [r["name"] for r in records if state(root, r)[0] in ACTIVE]
        if not active:
            return
        out(f"waiting for {len(active)} task(s): {', '.join(active[:4])}"
            + (" ..." if len(active) > 4 else ""))
        time.sleep(poll_s)


def collect(root: Path, out: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Records the finished stages in dvc.lock (`dvc commit`), upstream first: a stage is
    committed when its task succeeded, its outputs are complete and its upstream stages are up
    to date. Returns stage names by outcome: committed, up_to_date, active, failed, incomplete."""
    records = read_records(root)
    report: dict[str, list[str]] = {k: [] for k in
                                    ("committed", "up_to_date", "active", "failed", "incomplete")}
    if not records:
        out("collect: nothing was dispatched here")
        return report
    pending = {s.name: s for s in plan.pending(root)}
    for name, spec in pending.items():
        record = records.get(name)
        if record is None:
            continue
        task_state, outcome = state(root, record)
        logs = record["stdout"]
        if task_state in ACTIVE:
            report["active"].append(name)
            out(f"{name}: {task_state} (job {record['job_id']}, log {logs})")
        elif task_state != "succeeded":
            report["failed"].append(name)
            why = outcome.get("error") or "the job ended without a result (killed?)"
            out(f"{name}: FAILED ({task_state}: {why}); job {record['job_id']}, log {logs}, "
                f"errors {logs.removesuffix('.out')}.err; dispatch again to rerun it")
        elif (missing := plan.outputs_complete(spec)) or (stale := plan.changed(
                root, list(spec.upstream))):
            report["incomplete"].append(name)
            out(f"{name}: not committed: {missing or 'upstream not up to date: ' + str(stale)}")
        else:
            plan.commit(root, name)
            if plan.changed(root, [name]):
                report["incomplete"].append(name)
                out(f"{name}: committed but `dvc status` still lists it")
            else:
                report["committed"].append(name)
                out(f"{name}: committed (job {record['job_id']})")
    report["up_to_date"] = sorted(set(records) - set(pending))
    out(f"collect: {len(report['committed'])} committed, {len(report['failed'])} failed, "
        f"{len(report['active'])} still queued or running, {len(report['incomplete'])} "
        f"incomplete, {len(report['up_to_date'])} already up to date")
    return report
