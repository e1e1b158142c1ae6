"""Starting an inference server for a variant from its `launch:` settings, and stopping its whole process group."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...changes.errors import ChangeError
from ...gate.limits import shown

PLACEHOLDERS = ("model", "port", "host", "python")
HOST = "127.0.0.1"
STOP_GRACE_S = 15.0  # after SIGTERM; vLLM takes a few seconds to release the GPU, llama.cpp well under one
LOG_TAIL_LINES = 30
MAX_READY_TIMEOUT_S = 86_400.0  # a day; also what refuses .inf (a wait that never ends)
# The server is on loopback: an http_proxy in the environment must not route the health checks elsewhere.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LaunchError(ChangeError):
    """A `launch:` mapping that cannot be used: which key, what is wrong, how to fix it."""


class ServerStartError(RuntimeError):
    """A launched server that exited, or did not answer its health check in time; the message carries its log's tail."""


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one server: a command template and how long it may take to become ready.

    `command` may use {model}, {port}, {host} and {python} (this interpreter); it is split like a shell
    line but run without a shell, and each placeholder fills one argument whatever it contains.
    """

    command: str
    ready_timeout_s: float = 600.0

    def argv(self, *, model: str, port: int, host: str = HOST) -> list[str]:
        values = {"model": model, "port": str(port), "host": host, "python": sys.executable}
        # Split first, then fill: a model path with spaces stays one argument.
        return [part.format(**values) for part in shlex.split(self.command)]


def parse_launch(mapping: Any, *, key: str = "launch") -> LaunchSpec:
    """Validate a `launch:` mapping (`command`, optional `ready_timeout_s`) into a LaunchSpec.

    Raises LaunchError naming the dotted key (`launch.command`, ...) when a value is unusable.
    """
    if not isinstance(mapping, Mapping):
        raise LaunchError(key, f"expected a mapping, got {type(mapping).__name__}", f"write {key}: {{command: ..., ready_timeout_s: 600}}")
    unknown = [k for k in mapping if k not in ("command", "ready_timeout_s")]
    if unknown:
        raise LaunchError(f"{key}.{unknown[0]}", "unknown key", "use command and ready_timeout_s")
    command = mapping.get("command")
    if not isinstance(command, str) or not command.strip():
        raise LaunchError(f"{key}.command", f"expected a non-empty command string, got {shown(command)}",
                          'write e.g. command: "vllm serve {model} --port {port}"')
    try:
        fields = {name for part in shlex.split(command) for _, name, _, _ in string.Formatter().parse(part) if name is not None}
    except ValueError as exc:  # unbalanced quotes or braces
        raise LaunchError(f"{key}.command", f"cannot be split into arguments ({exc})",
                          "balance the quotes, and write a literal brace as {{ or }}") from None
    unknown_fields = sorted(fields - set(PLACEHOLDERS))
    if unknown_fields:
        raise LaunchError(f"{key}.command", f"unknown placeholder {{{unknown_fields[0]}}}",
                          f"use only {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if "port" not in fields:
        raise LaunchError(f"{key}.command", "does not pass {port}",
                          "add the server's port flag, e.g. --port {port}: the port is picked free at launch")
    try:  # what only filling the template finds: a conversion ({model!x}), a format spec ({port:q}), an attribute
        LaunchSpec(command).argv(model="/models/m.gguf", port=8000)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        problem = f"cannot be filled in ({type(exc).__name__}: {shown(str(exc))})"
        raise LaunchError(f"{key}.command", problem,
                          "write placeholders plainly, e.g. {model} and {port}, without ! or : after the name") from None
    timeout = mapping.get("ready_timeout_s", 600.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_READY_TIMEOUT_S:
        raise LaunchError(f"{key}.ready_timeout_s",
                          f"expected a positive number of seconds up to {MAX_READY_TIMEOUT_S:g}, got {shown(timeout)}",
                          "write e.g. ready_timeout_s: 600")
    return LaunchSpec(command=command, ready_timeout_s=float(timeout))


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the OS picks it); another process could take it before the server binds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def launched(spec: LaunchSpec, *, model: str, log_path: Path, stop_grace_s: float = STOP_GRACE_S) -> Iterator[str]:
    """Start the server, wait until it is ready, yield its base URL ("http://127.0.0.1:PORT"), then stop it.

    The server runs in its own process group with stdout and stderr appended to `log_path`, which is kept.
    Ready means GET /health answers 200, or, for servers without /health (404), GET /v1/models does.
    On exit the whole group gets SIGTERM, then SIGKILL after `stop_grace_s`. On Linux the server is also
    sent SIGTERM if the calling thread dies first, so call this from a thread that outlives the server
    (the main thread, or a pytest fixture), not from a short-lived worker thread.

    Raises ServerStartError if the command cannot start, exits early, or is not ready within
    `spec.ready_timeout_s`; the message ends with the log's last lines.
    """
    port = free_port()
    argv = spec.argv(model=model, port=port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            # Its own session, so stopping it reaches the workers it forks (vLLM's engine cores) too.
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        except OSError as exc:
            raise ServerStartError(f"cannot start {argv[0]!r}: {exc.strerror or exc}; is it installed and on PATH?") from exc
    base_url = f"http://{HOST}:{port}"
    try:
        _wait_ready(process, base_url, spec.ready_timeout_s, log_path)
        yield base_url
    finally:
        stop(process, grace_s=stop_grace_s)


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a function for the child to run before exec so that the kernel SIGTERMs the server when the
    thread that started it dies without reaching `stop` (a CI timeout's SIGKILL, say): no server, and no GPU
    memory, outlives the run. libc is looked up here, in the parent: the forked child should only call it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(process: subprocess.Popen[bytes], base_url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        code = process.poll()
        if code is not None:
            raise ServerStartError(f"the server exited with status {code} before it was ready\n{log_tail(log_path)}")
        if _ready(base_url):
            return
        if time.monotonic() > deadline:
            raise ServerStartError(f"the server was not ready within ready_timeout_s={timeout_s:g}: "
                                   f"{base_url}/health never answered 200\n{log_tail(log_path)}")
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def _ready(base_url: str) -> bool:
    status = _status(base_url + "/health")
    if status == 404:  # llama-cpp-python's server has no /health; its model list answers once the model is loaded
        status = _status(base_url + "/v1/models")
    return status == 200


def _status(url: str) -> int | None:
    try:
        with _DIRECT.open(url, timeout=2.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)  # llama.cpp answers 503 while it loads the model
    except (OSError, ValueError):
        return None  # not listening yet


def stop(process: subprocess.Popen[bytes], *, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM the process group, SIGKILL whatever is left after `grace_s`; returns the leader's exit status."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # Also after a clean exit of the leader: a worker that ignored SIGTERM must not outlive the test run.
    _signal_group(process.pid, signal.SIGKILL)
    return process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is gone already


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return f"last {len(tail)} lines of {path}:\n" + "\n".join(tail)
