"""The `launch:` settings, and starting, health-checking and stopping a server process group (fake servers here)."""

from __future__ import annotations

import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pytest_longctx.backends.served.launch import (
    LaunchError,
    LaunchSpec,
    ServerStartError,
    launched,
    parse_launch,
)

# A server whose readiness and shutdown the test picks: `slow` answers /health 503 for half a second (as
# llama.cpp does while it loads), `never` always does, `no-health` has only /v1/models (llama-cpp-python),
# `stubborn` ignores SIGTERM and forks a worker into its group (as vLLM forks its engine core).
SERVER = textwrap.dedent(
    r'''
    import os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, mode, pids = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    started = time.monotonic()
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
        worker = subprocess.Popen([sys.executable, "-c", stubborn])
        open(pids, "w").write(f"{os.getpid()} {worker.pid}")
    else:
        open(pids, "w").write(str(os.getpid()))
    print(f"fake server mode={mode} listening on {port}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/health":
                ready = mode == "stubborn" or (mode == "slow" and time.monotonic() - started > 0.5)
                status = 404 if mode == "no-health" else 200 if ready else 503
            elif self.path == "/v1/models":
                status = 200 if mode in ("no-health", "stubborn") else 503
            else:
                status = 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"{}")

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    '''
)


@pytest.fixture
def server_script(tmp_path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


def spec(script: Path, mode: str, pids: Path, timeout: float = 20.0) -> LaunchSpec:
    return LaunchSpec(command=f"{{python}} {script} {{port}} {mode} {pids}", ready_timeout_s=timeout)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_parse_launch_reads_the_command_and_timeout():
    command = "vllm serve {model} --kv-cache-dtype fp8 --max-model-len 32768 --port {port}"
    parsed = parse_launch({"command": command, "ready_timeout_s": 900})
    assert parsed == LaunchSpec("vllm serve {model} --kv-cache-dtype fp8 --max-model-len 32768 --port {port}", 900.0)
    assert parse_launch({"command": "x --port {port}"}).ready_timeout_s == 600.0


@pytest.mark.parametrize(
    ("raw", "key", "problem"),
    [
        ("vllm serve", "launch", "expected a mapping"),
        ({"command": "x --port {port}", "env": {}}, "launch.env", "unknown key"),
        ({}, "launch.command", "non-empty command"),
        ({"command": "  "}, "launch.command", "non-empty command"),
        ({"command": "vllm serve {model_path} --port {port}"}, "launch.command", "unknown placeholder {model_path}"),
        ({"command": "vllm serve {model}"}, "launch.command", "does not pass {port}"),
        ({"command": "vllm serve '{model} --port {port}"}, "launch.command", "cannot be split"),
        ({"command": "x --json {a: 1} --port {port}"}, "launch.command", "cannot be split|unknown placeholder"),
        ({"command": "x --port {port}", "ready_timeout_s": 0}, "launch.ready_timeout_s", "positive number"),
        ({"command": "x --port {port}", "ready_timeout_s": "10m"}, "launch.ready_timeout_s", "positive number"),
        ({"command": "x --port {port}", "ready_timeout_s": True}, "launch.ready_timeout_s", "positive number"),
    ],
)
def test_parse_launch_names_the_key_the_problem_and_the_fix(raw, key, problem):
    with pytest.raises(LaunchError, match=problem) as caught:
        parse_launch(raw)
    assert isinstance(caught.value, ValueError)  # a gate parser can treat it like its other usage errors
    assert caught.value.key == key
    assert str(caught.value).startswith(f"key '{key}': ") and "Fix: " in str(caught.value)


def test_the_key_prefix_follows_where_the_mapping_sits():
    with pytest.raises(LaunchError) as caught:
        parse_launch({"command": "x"}, key="candidate.launch")
    assert caught.value.key == "candidate.launch.command"


def test_placeholders_fill_whole_arguments_without_a_shell():
    launch = LaunchSpec('{python} -m srv --model {model} --port={port} --alias "my model" --x $HOME;')
    argv = launch.argv(model="/m/with space/a.gguf", port=8123)
    assert argv == [sys.executable, "-m", "srv", "--model", "/m/with space/a.gguf", "--port=8123", "--alias", "my model", "--x", "$HOME;"]


def test_launched_waits_for_health_then_stops_the_server(server_script, tmp_path):
    pids, log = tmp_path / "pids", tmp_path / "logs" / "server.log"
    started = time.monotonic()
    with launched(spec(server_script, "slow", pids), model="m", log_path=log) as url:
        assert time.monotonic() - started >= 0.5  # it waited out the 503s
        assert url.startswith("http://127.0.0.1:")
        assert get(url + "/health") == 200
        pid = int(pids.read_text())
        assert alive(pid)
    assert not alive(pid)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)
    text = log.read_text()
    assert f"$ {sys.executable} {server_script} " in text  # the command, for whoever reads the log
    assert "fake server mode=slow listening" in text  # and the server's own output, kept after exit


def test_a_server_without_health_is_ready_when_it_lists_models(server_script, tmp_path):
    with launched(spec(server_script, "no-health", tmp_path / "pids"), model="m", log_path=tmp_path / "s.log") as url:
        assert get(url + "/v1/models") == 200


def test_stopping_kills_the_whole_group_even_when_sigterm_is_ignored(server_script, tmp_path):
    pids = tmp_path / "pids"
    with launched(spec(server_script, "stubborn", pids), model="m", log_path=tmp_path / "s.log", stop_grace_s=0.5):
        leader, worker = map(int, pids.read_text().split())
        assert alive(leader) and alive(worker)
    deadline = time.monotonic() + 5
    while alive(worker) and time.monotonic() < deadline:  # the orphaned worker is reaped by init
        time.sleep(0.05)
    assert not alive(leader) and not alive(worker)


def test_a_server_does_not_outlive_a_killed_test_run(server_script, tmp_path):
    """SIGKILL leaves no chance to run `stop`; the server still goes (Linux), as after a CI timeout."""
    pids = tmp_path / "pids"
    runner = tmp_path / "runner.py"
    runner.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pytest_longctx.backends.served.launch import LaunchSpec, launched
        server = LaunchSpec({str(spec(server_script, "slow", pids).command)!r})
        with launched(server, model="m", log_path=Path({str(tmp_path / "s.log")!r})):
            print("ready", flush=True)
            time.sleep(60)
    """))
    import subprocess

    parent = subprocess.Popen([sys.executable, str(runner)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        server = int(pids.read_text())
        assert alive(server)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server)


def test_a_server_that_exits_early_reports_its_log(tmp_path):
    command = "{python} -c \"import sys; print('CUDA error: no kernel image'); sys.exit(3)\" --port {port}"
    with pytest.raises(ServerStartError, match=r"(?s)exited with status 3 before it was ready.*CUDA error: no kernel image"):
        with launched(LaunchSpec(command, 20), model="m", log_path=tmp_path / "s.log"):
            pytest.fail("must not be reached")


def test_a_server_that_is_never_ready_times_out_and_is_stopped(server_script, tmp_path):
    pids = tmp_path / "pids"
    with pytest.raises(ServerStartError, match=r"(?s)not ready within ready_timeout_s=0.8.*mode=never"):
        with launched(spec(server_script, "never", pids, timeout=0.8), model="m", log_path=tmp_path / "s.log"):
            pytest.fail("must not be reached")
    assert not alive(int(pids.read_text()))


def test_a_missing_program_is_a_start_error(tmp_path):
    with pytest.raises(ServerStartError, match="cannot start 'no-such-server-binary'.*on PATH"):
        with launched(LaunchSpec("no-such-server-binary --port {port}"), model="m", log_path=tmp_path / "s.log"):
            pass
