"""Each measurement in a fresh process of its own, started from a forkserver that has imported
the model libraries but run nothing: one model's allocations and thread pools cannot colour the
next one's numbers, and a crash or a hang is reported with the model's name."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any
from unittest import mock

from torch import nn

REGISTRY_FACTORY = "experiments.registry:build_model"


def load_factory(path: str) -> Callable[..., nn.Module]:
    """The callable a worker spec's "factory" names ("package.module:callable")."""
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"model factory {path!r}: expected 'package.module:callable'")
    return getattr(importlib.import_module(module), attr)


class WorkerTimeout(RuntimeError):
    """A worker ran past its time limit and was killed."""


class WorkerDied(RuntimeError):
    """A worker process was killed before it could report (out of memory, a signal)."""


def _serve(conn: Connection, worker: Callable[[dict[str, Any]], dict[str, Any]],
           spec: dict[str, Any]) -> None:
    """The body of a worker process: sends ("ok", result) or ("error", repr, traceback)."""
    try:
        outcome: tuple = ("ok", worker(spec))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        outcome = ("error", repr(err), traceback.format_exc())
    conn.send(outcome)
    conn.close()


def run_in_subprocess(spec: dict[str, Any], timeout_s: float,
                      worker: Callable[[dict[str, Any]], dict[str, Any]],
                      limit_name: str = "speed.timeout_s") -> dict[str, Any]:
    """`worker(spec)` in a fresh process of its own (from a forkserver that has imported the
    registry's libraries but run nothing); a failure or a timeout raises naming the model."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([REGISTRY_FACTORY.partition(":")[0]])
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(send, worker, spec))
    # OMP/MKL thread counts in the environment only while the worker (and, the first time,
    # the forkserver, whose OpenMP runtime reads them once) starts
    threads = str(spec["settings"]["threads"])
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}):
        proc.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            proc.kill()
            raise WorkerTimeout(f"speed worker for {spec['model']!r} ran past "
                                f"{limit_name}={timeout_s:g} s")
        try:
            status, *outcome = receive.recv()
        except EOFError:  # killed (out of memory, a signal) before it could report
            proc.join()
            raise WorkerDied(f"speed worker for {spec['model']!r} died "
                             f"(exit code {proc.exitcode})") from None
    finally:
        receive.close()
        proc.join()
    if status == "ok":
        return outcome[0]
    error, remote_traceback = outcome
    failure = RuntimeError(f"speed worker for {spec['model']!r} failed: {error}")
    failure.add_note(f"in the worker process:\n{remote_traceback}")
    raise failure
