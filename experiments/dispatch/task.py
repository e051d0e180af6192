"""One dispatched stage: the task that runs its command on a node, and the records that say
what happened to it (`runs/_dispatch/stages/<stage>.json` at submission,
`runs/_dispatch/outcomes/<token>.json` written by the task)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from experiments.atomic import write_text

DISPATCH_DIR = Path("runs/_dispatch")  # under the repository root; .dvcignore hides it


def _ignore_usr2() -> None:
    # submitit's preemption/timeout signal (SIGUSR2) reaches every process of the job step; the
    # stage must not die of it before submitit has checkpointed and requeued the task.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class StageFailed(RuntimeError):
    """The stage's command exited with an error, or an upstream stage did not succeed."""


class StageTask(submitit.helpers.Checkpointable):
    """Runs one stage's DVC command lines in its working folder, as `dvc repro` runs them (a
    shell, DVC_ROOT and DVC_STAGE set), with the project's interpreter first on PATH.

    Checkpointable: on preemption or timeout submitit calls `checkpoint()`, which resubmits
    this same call; the stage's process is ended and, requeued, starts again: training resumes
    from `runs/<model>/checkpoints/last.ckpt`."""

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        root = Path(spec["root"])
        outcome = root / DISPATCH_DIR / "outcomes" / f"{spec['token']}.json"
        env = submitit.JobEnvironment() if spec["executor"] != "debug" else None
        info = {"stage": spec["name"], "job_id": env.job_id if env else "debug",
                "host": socket.gethostname(), "started": time.time()}
        for name, token in spec["after"].items():
            state = read_outcome(root, token).get("state")
            if state != "succeeded":
                _write(outcome, info | {"state": "failed", "error": f"upstream {name} {state}"})
                raise StageFailed(f"{spec['name']} not run: upstream {name} is {state}")
        run_env = dict(os.environ, DVC_ROOT=str(root), DVC_STAGE=spec["name"])
        run_env["PATH"] = f"{spec['bin_dir']}{os.pathsep}{run_env.get('PATH', '')}"
        for line in spec["cmd"]:
            proc = subprocess.Popen([spec["shell"], "-c", line], cwd=spec["wdir"], env=run_env,
                                    start_new_session=True, preexec_fn=_ignore_usr2)
            _write(outcome, info | {"state": "running", "pid": proc.pid, "cmd": line})
            try:
                code = proc.wait()
            except BaseException:  # requeue (SystemExit), cancel (KeyboardInterrupt): end it all
                _end_group(proc)
                raise
            if code != 0:
                why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                _write(outcome, info | {"state": "failed", "error": why, "cmd": line})
                raise StageFailed(f"{spec['name']}: `{line}` failed ({why})")
        _write(outcome, info | {"state": "succeeded", "ended": time.time()})
        return {"stage": spec["name"], "seconds": round(time.time() - info["started"], 1)}


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group (its shell and interpreter), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _write(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=1))


def read_outcome(root: Path, token: str) -> dict[str, Any]:
    path = root / DISPATCH_DIR / "outcomes" / f"{token}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def record_path(root: Path, name: str) -> Path:
    return root / DISPATCH_DIR / "stages" / f"{name.replace('/', '_')}.json"


def write_record(root: Path, record: dict[str, Any]) -> None:
    _write(record_path(root, record["name"]), record)


def read_records(root: Path) -> dict[str, dict[str, Any]]:
    """The latest submission of each dispatched stage, by stage name."""
    folder = root / DISPATCH_DIR / "stages"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return {r["name"]: r for r in records}


def _in_queue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (ended, not yet reaped by its parent) counts as ended
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def state(root: Path, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(state, outcome) of a submitted stage: succeeded or failed as its task wrote; queued or
    running while its job is alive; lost when the job ended without saying (killed, out of
    memory, node failure)."""
    outcome = read_outcome(root, record["token"])
    if outcome.get("state") in ("succeeded", "failed"):
        return outcome["state"], outcome
    if record["executor"] == "slurm":
        alive = _in_queue(record["job_id"])
    elif record["executor"] == "local":
        alive = _alive(int(record["job_id"]))
    else:
        alive = False
    if alive:
        return ("running" if outcome else "queued"), outcome
    return "lost", outcome
