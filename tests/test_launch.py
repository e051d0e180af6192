"""The stage launcher: a preloaded server forks each stage with the client's argv, cwd,
environment, stdio and signals, and reports its exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from experiments import launch
from experiments.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROBE = textwrap.dedent("""
    import json, os, signal, sys, time
    if __name__ == "__main__":
        try:  # a signal may come as soon as the first line is out
            print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                              "probe": os.environ.get("PROBE"), "sid": os.getsid(0),
                              "pgid": os.getpgid(0), "pid": os.getpid(),
                              "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                              "stdin": sys.stdin.read() if "--stdin" in sys.argv else None}),
                  flush=True)
            print("probe stderr", file=sys.stderr, flush=True)
            if "--sleep" in sys.argv:
                time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(5)
        sys.exit(int(sys.argv[1]))
""")


def _client(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            stdin: str = "", idle_s: float = 5.0, background: bool = False,
            sigint: signal.Handlers = signal.SIG_DFL):
    """`run_preloaded('probe', args)` in a fresh client process, whose SIGINT disposition is
    `sigint` whatever this process's is (a background job ignores it); the probe module lives
    in tmp_path, so each test gets a server of its own (sys.path is in the server key)."""
    (tmp_path / "probe.py").write_text(PROBE)
    code = ("import sys; from experiments.launch import run_preloaded; "
            f"sys.exit(run_preloaded('probe', sys.argv[1:], preload=('yaml',), idle_s={idle_s}))")
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}", **(env or {})}
    command = [sys.executable, "-c", code, *args]
    def set_sigint() -> None:
        signal.signal(signal.SIGINT, sigint)

    if background:
        return subprocess.Popen(command, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=set_sigint)
    return subprocess.run(command, cwd=tmp_path, env=full_env, input=stdin, capture_output=True,
                          text=True, timeout=60, preexec_fn=set_sigint)


def test_stage_gets_argv_cwd_env_stdio_and_its_exit_status(tmp_path):
    first = _client(tmp_path, "3", "--stdin", env={"PROBE": "a"}, stdin="hello")
    assert first.returncode == 3, first.stderr
    seen = json.loads(first.stdout)
    assert seen["argv"] == ["3", "--stdin"] and seen["cwd"] == str(tmp_path)
    assert seen["probe"] == "a" and seen["stdin"] == "hello"
    assert "probe stderr" in first.stderr
    # its own process group, in the server's session (not the client's)
    assert seen["pgid"] == seen["pid"] and seen["sid"] != os.getsid(0)

    second = _client(tmp_path, "0", env={"PROBE": "b"})
    assert second.returncode == 0
    again = json.loads(second.stdout)
    assert again["probe"] == "b" and again["pid"] != seen["pid"]
    assert again["sid"] == seen["sid"], "the second stage should come from the same server"
    assert not seen["sigint_ignored"]
    ignoring = json.loads(_client(tmp_path, "0", sigint=signal.SIG_IGN).stdout)
    assert ignoring["sigint_ignored"], "a client that ignores SIGINT gets a stage that does too"


def test_a_variable_read_at_library_load_selects_another_server(tmp_path):
    one = json.loads(_client(tmp_path, "0", env={"OMP_NUM_THREADS": "1"}).stdout)
    two = json.loads(_client(tmp_path, "0", env={"OMP_NUM_THREADS": "2"}).stdout)
    assert one["sid"] != two["sid"]
    # files appearing in the project (dvc.lock, reports) keep the server: they are not packages
    (REPO / f".launch-test-{os.getpid()}").touch()
    try:
        again = json.loads(_client(tmp_path, "0", env={"OMP_NUM_THREADS": "2"}).stdout)
    finally:
        (REPO / f".launch-test-{os.getpid()}").unlink()
    assert again["sid"] == two["sid"]


def _wait_for_line(stream) -> dict:
    line = stream.readline()
    assert line, "the probe printed nothing"
    return json.loads(line)


def _gone(pid: int, within_s: float) -> bool:
    """Exited (a zombie counts: whoever adopted it may not reap it soon)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_signals_to_the_client_reach_the_stage(tmp_path):
    client = _client(tmp_path, "0", "--sleep", background=True)
    stage = _wait_for_line(client.stdout)
    client.send_signal(signal.SIGINT)
    out, _ = client.communicate(timeout=30)
    assert "interrupted" in out and client.returncode == 5

    client = _client(tmp_path, "0", "--sleep", background=True)
    stage = _wait_for_line(client.stdout)
    client.send_signal(signal.SIGTERM)
    client.communicate(timeout=30)
    assert client.returncode == 128 + signal.SIGTERM
    assert _gone(stage["pid"], 5)


def test_a_killed_client_takes_its_stage_with_it(tmp_path):
    client = _client(tmp_path, "0", "--sleep", background=True)
    stage = _wait_for_line(client.stdout)
    client.kill()
    client.wait(timeout=10)
    assert _gone(stage["pid"], 10), "the monitor should end the stage of a vanished client"


def test_a_client_killed_before_reading_the_pid_takes_its_stage_with_it(tmp_path):
    (tmp_path / "sleeper.py").write_text("import os, time\nprint(os.getpid(), flush=True)\n"
                                         "time.sleep(60)\n")
    # a raw client: sends its request, then dies without reading the monitor's reply
    code = textwrap.dedent("""
        import json, os, signal, socket, struct
        from experiments import launch
        folder, key = launch._socket_folder(), launch.server_key(("yaml",))
        path = folder / (key + ".sock")
        with launch._locked(folder / (key + ".lock")):
            sock = launch._connect(path) or launch._start_server(path, ("yaml",), 5.0)
        payload = json.dumps({"module": "sleeper", "args": [], "cwd": os.getcwd(),
                              "env": dict(os.environ), "ignored_signals": []}).encode()
        stage_out, stage_stdout = os.pipe()
        socket.send_fds(sock, [struct.pack("!Q", len(payload)) + payload],
                        [0, stage_stdout, 2])
        print(os.read(stage_out, 100).decode().strip(), flush=True)  # the stage is running
        os.kill(os.getpid(), signal.SIGKILL)  # its pid is unread in the socket
    """)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    client = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True)
    stage = int(client.stdout.readline())
    client.wait(timeout=30)
    assert _gone(stage, 10), "the monitor should end the stage of a vanished client"


def test_idle_server_exits_and_a_new_one_starts(tmp_path):
    before = set(launch._socket_folder().glob("*.sock"))
    first = json.loads(_client(tmp_path, "0", idle_s=2).stdout)
    created = set(launch._socket_folder().glob("*.sock")) - before
    assert created, "the first client should have started a server"
    assert _gone(first["sid"], 15), "the idle server should exit"  # its pid is its session id
    assert not any(sock.exists() for sock in created), "an exiting server removes its socket"
    second = json.loads(_client(tmp_path, "0", idle_s=2).stdout)
    assert second["sid"] != first["sid"]


def _params(tmp_path: Path, launcher: object) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["launcher"] = launcher
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_launcher_setting_is_checked(tmp_path):
    assert launch.launcher_setting(_params(tmp_path, "direct")) == "direct"
    assert launch.launcher_setting(tmp_path / "missing.yaml") == "direct"
    with pytest.raises(ConfigError, match="launcher='fork'"):
        launch.launcher_setting(_params(tmp_path, "fork"))


def test_entry_point_rejects_an_unknown_stage_and_runs_direct_stages(tmp_path):
    run = subprocess.run([sys.executable, "-m", "experiments", "trian"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown stage 'trian'" in run.stderr
    params = _params(tmp_path, "direct")
    run = subprocess.run([sys.executable, "-m", "experiments", "complexity", "--params",
                          str(params), "--models", "nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "nope" in run.stderr and "launcher:" not in run.stderr
