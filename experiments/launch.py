"""Stage launcher: `python -m experiments <stage> [args]` runs `experiments.<stage>`.

With `launcher: preload` (params.yaml) the stage runs in a process forked from a server that has
already imported torch, Lightning, asteroid, SpeechBrain and the rest of PRELOAD: a pipeline
of 24 stages then pays those imports (2-6 s a stage, most of a smoke run) once. With
`launcher: direct`, or where the server cannot run, the stage runs in this process, exactly as
`python -m experiments.<stage>` does.

The server
- imports third-party libraries only, never this project's code (except this file and the
  package's `__init__`, both in its key), so every stage imports the project as it is on disk;
- runs no torch op: no thread pool exists when it forks, and the stage sets its own threads;
- is keyed by interpreter, project folder, installed packages (mtimes of sys.path folders),
  this file, PRELOAD and the environment variables that libraries read when they load
  (OMP_*, MKL_*, PYTHON*, ...); a client whose key differs starts its own server;
- listens on a socket in a private (0700) folder, serves its own user only, and exits once it
  has been idle (no request, no stage running) for `idle_s` seconds.

A request carries the module, argv, cwd, environment and the client's stdin/stdout/stderr.
For each request the server forks a monitor, which forks the stage into its own process group,
sends the client the stage's pid (the client forwards SIGINT/SIGTERM/SIGHUP to that group),
kills the stage if the client goes away, and sends back the exit status.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

STAGES = ("prepare", "train", "evaluate", "ablate", "complexity", "speed", "report")
LAUNCHERS = ("preload", "direct")
PRELOAD = (
    "numpy", "scipy.signal", "scipy.stats", "pandas", "soundfile", "yaml", "tqdm", "torch",
    "torch.utils.checkpoint", "pytorch_lightning", "dvclive.lightning", "asteroid.models",
    "asteroid.engine.system", "asteroid.losses", "asteroid.data",
    "speechbrain.lobes.models.dual_path", "fvcore.nn", "ptflops.aten_engine",
    "matplotlib.figure", "matplotlib.backends.backend_agg", "pyloudnorm",
)
# Read by native libraries when they load, i.e. in the server, not in the forked stage.
KEY_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "PYTHON", "LD_", "MALLOC_",
                    "TORCH", "PYTORCH", "CUDA", "NCCL", "MPL", "VIRTUAL_ENV")
IDLE_S = 120.0
START_TIMEOUT_S = 180.0
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The stage takes the client's dispositions of these (e.g. SIGINT ignored in a background job),
# not the server's, as a fresh interpreter started by the client would.
INHERITED_SIGNALS = (*FORWARDED_SIGNALS, signal.SIGQUIT)


class LauncherUnavailable(RuntimeError):
    """The preload server cannot be used here; the stage runs directly instead."""


# ---------------------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m experiments {{{','.join(STAGES)}}} [stage arguments]\n\n"
              + __doc__.split("\n\n")[1])
        return 0 if argv else 2
    stage, args = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"python -m experiments: unknown stage {stage!r}; one of {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    module = f"experiments.{stage}"
    if launcher_setting(_params_path(args)) == "preload":
        try:
            return run_preloaded(module, args)
        except LauncherUnavailable as err:
            print(f"launcher: {err}; running {module} directly", file=sys.stderr)
    return run_direct(module, args)


def _params_path(args: list[str]) -> Path:
    """The stage's `--params FILE` (every stage takes it), else params.yaml."""
    for i, arg in enumerate(args):
        if arg == "--params" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--params="):
            return Path(arg.partition("=")[2])
    return Path("params.yaml")


def launcher_setting(params: Path) -> str:
    from experiments.config import ConfigError, load_profile

    if not params.is_file():
        return "direct"  # the stage itself reports the missing file
    value = load_profile(params).get("launcher", "direct")
    if value not in LAUNCHERS:
        raise ConfigError(f"{params}: launcher={value!r}; use one of {list(LAUNCHERS)}")
    return value


def run_direct(module: str, args: Sequence[str]) -> int:
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return _exit_code(done.code)
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------- client
def run_preloaded(module: str, args: Sequence[str], preload: Sequence[str] = PRELOAD,
                  idle_s: float = IDLE_S) -> int:
    """Runs `module` as __main__ with `args` in a process forked from the preload server
    (started if needed); returns its exit status (128 + signal number if it was killed)."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "fork"):
        raise LauncherUnavailable("this platform has no fork/AF_UNIX")
    folder = _socket_folder()
    key = server_key(preload)
    path = folder / f"{key}.sock"
    for _attempt in (1, 2):
        sock = _connect(path)
        if sock is None:
            with _locked(folder / f"{key}.lock"):
                sock = _connect(path) or _start_server(path, preload, idle_s)
        with sock:
            code = _request(sock, module, args)
        if code is not None:
            return code
        # the server closed without starting the stage (it was exiting): once more, then give up
    raise LauncherUnavailable(f"server at {path} did not start the stage")


def _socket_folder() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"s4m-launch-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LauncherUnavailable(f"{folder} is not a private folder of this user")
    return folder


def server_key(preload: Sequence[str]) -> str:
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for part in (os.path.realpath(sys.executable), sys.version, str(package), *preload):
        h.update(part.encode() + b"\0")
    for source in (Path(__file__), package / "__init__.py"):
        h.update(source.read_bytes())
    for entry in sys.path:  # installed packages: a pip install changes a folder's mtime
        h.update(entry.encode() + b"\0")
        folder = Path(entry or ".").resolve()
        if folder != package.parent:  # the project's own code is imported after the fork
            with contextlib.suppress(OSError):
                h.update(f"{folder.stat().st_mtime_ns}\0".encode())
    for name in sorted(os.environ):
        if name.startswith(KEY_ENV_PREFIXES):
            h.update(f"{name}={os.environ[name]}\0".encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start_server(path: Path, preload: Sequence[str], idle_s: float) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's socket
    log = path.with_suffix(".log")
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "experiments.launch", "--serve", str(path),
             "--idle-s", str(idle_s), "--preload", ",".join(preload)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path(__file__).resolve().parents[1],
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        if server.poll() is not None:
            raise LauncherUnavailable(f"the preload server exited; its log: {log}")
        time.sleep(0.05)
    server.kill()
    raise LauncherUnavailable(f"the preload server did not start in {START_TIMEOUT_S:.0f} s")


def _request(sock: socket.socket, module: str, args: Sequence[str]) -> int | None:
    """Exit status of the stage; None when the server closed before starting it. Signals
    that arrive before the stage's pid is known are held and forwarded once it is."""
    ignored = [int(sig) for sig in INHERITED_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN]
    payload = json.dumps({"module": module, "args": list(args), "cwd": os.getcwd(),
                          "env": dict(os.environ), "ignored_signals": ignored}).encode()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    group: int | None = None
    held: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if group is None:
            held.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS
                if signal.getsignal(sig) != signal.SIG_IGN}
    replies = sock.makefile("r")
    try:
        try:
            socket.send_fds(sock, [struct.pack("!Q", len(payload)) + payload], [0, 1, 2])
            started = replies.readline()
        except OSError:
            started = ""
        if not started:
            return None
        group = json.loads(started)["pid"]
        for signum in held:
            forward(signum, None)
        finished = replies.readline()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if group is None:
            for signum in held:  # the stage never started: this process takes them
                signal.raise_signal(signum)
    if not finished:
        raise RuntimeError(f"launcher: {module} (pid {group}) lost its monitor; exit unknown")
    code = json.loads(finished)["exit"]
    return 128 - code if code < 0 else code


# ---------------------------------------------------------------------------------- server
def serve(path: Path, idle_s: float, preload: Sequence[str]) -> None:
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as err:  # an optional library: the stage imports (and reports) it
            print(f"preload {name}: {type(err).__name__}: {err}", flush=True)
    if threading.active_count() != 1:
        raise SystemExit(f"preloading started threads {threading.enumerate()}: forking is unsafe")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    listener.bind(str(staging))
    listener.listen(64)
    os.replace(staging, path)  # clients see the socket only once it accepts
    bound = path.stat().st_ino
    listener.settimeout(0.5)
    monitors: set[int] = set()
    last_active = time.monotonic()
    try:
        while monitors or time.monotonic() - last_active < idle_s:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                monitors.add(_serve_one(conn, listener))
            monitors -= _reaped(monitors)
            if conn is not None or monitors:
                last_active = time.monotonic()
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == bound:  # not yet replaced by a newer server's
                path.unlink()
        with contextlib.suppress(OSError):
            if path.with_suffix(".log").stat().st_size == 0:
                path.with_suffix(".log").unlink()
        listener.settimeout(0)
        while True:  # requests that connected before the unlink still get their stage
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, TimeoutError):
                break
            _serve_one(conn, listener)


def _reaped(pids: set[int]) -> set[int]:
    done = set()
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                done.add(pid)
    return done


def _serve_one(conn: socket.socket, listener: socket.socket) -> int:
    """Forks the monitor of one request; returns its pid."""
    conn.setblocking(True)
    pid = os.fork()
    if pid:
        conn.close()
        return pid
    code = 1
    try:
        listener.close()
        code = _monitor(conn)
    finally:
        os._exit(code)


def _monitor(conn: socket.socket) -> int:
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                              struct.calcsize("3i")))[1]
    if uid != os.getuid():
        return 1
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < 8:
        return 1
    size = struct.unpack("!Q", data[:8])[0]
    while len(data) < 8 + size:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return 1
        data += chunk
    request = json.loads(data[8:])
    stage = os.fork()
    if stage == 0:
        conn.close()
        _run_stage(request, fds)  # never returns
    os.setpgid(stage, stage)  # here too (as shells do): the group exists before anyone signals it
    for fd in fds:
        os.close(fd)
    client_alive = _send(conn, {"pid": stage})
    try:  # readable when the stage exits (Linux 5.3+); otherwise poll
        exited: int | None = os.pidfd_open(stage)
    except (AttributeError, OSError):
        exited = None
    kill_at = None  # once the client is gone: SIGTERM to the stage's group, later SIGKILL
    while True:
        if not client_alive and kill_at is None:
            _signal_group(stage, signal.SIGTERM)
            kill_at = time.monotonic() + 5.0
        watched = [f for f in (conn if client_alive else None, exited) if f is not None]
        wait = None if client_alive and exited is not None else 0.2
        readable, _, _ = select.select(watched, [], [], wait)
        if client_alive and conn in readable and _closed(conn):
            client_alive = False
        done, status = os.waitpid(stage, os.WNOHANG)
        if done:
            if client_alive:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            return 0
        if kill_at is not None and time.monotonic() > kill_at:
            _signal_group(stage, signal.SIGKILL)


def _send(conn: socket.socket, message: dict) -> bool:
    """False when the client is gone (it was killed, perhaps before reading anything)."""
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        return False
    return True


def _closed(conn: socket.socket) -> bool:
    """The client went away (a reset: it died before reading what it was sent)."""
    try:
        return not conn.recv(1)
    except OSError:
        return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _run_stage(request: dict, fds: list[int]) -> None:
    """In the forked stage process: becomes the client's process, runs the module, exits as
    an interpreter would (non-daemon threads joined, atexit handlers run, stdio flushed)."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in INHERITED_SIGNALS:
            if int(sig) in request["ignored_signals"]:
                signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                              else signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _reopen_stdio()
        code = run_direct(request["module"], request["args"])
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _reopen_stdio() -> None:
    """Python's stdio objects for fds 0-2 as an interpreter starting here would make them."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False,
                                       buffering=1 if os.isatty(1) or unbuffered else -1)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace",
                                       closefd=False)


def _serve_main(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the preload server (started by clients)")
    parser.add_argument("--serve", type=Path, required=True, help="socket path")
    parser.add_argument("--idle-s", type=float, default=IDLE_S)
    parser.add_argument("--preload", default=",".join(PRELOAD))
    args = parser.parse_args(argv)
    serve(args.serve, args.idle_s, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    _serve_main(sys.argv[1:])
