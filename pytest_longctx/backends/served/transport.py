"""HTTP for served models: connections, JSON posts and server-sent event streams, with errors that say where."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..protocol import CellTimeout


class ServedBackendError(RuntimeError):
    """A served model that answered with an error, broke the stream, or measured something other than asked."""


def connection(parts: urllib.parse.SplitResult, timeout_s: float) -> http.client.HTTPConnection:
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServedBackendError(f"base URL {parts.geturl()!r} is not http(s)://host[:port]")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout_s)


def post(conn: http.client.HTTPConnection, path: str, payload: bytes, url: str, timeout_s: float | None) -> http.client.HTTPResponse:
    with _network_errors(timeout_s, "before the first token", stalled=f"{url}{path} sent no response within the backend's timeout",
                         broke=f"{url}{path} failed"):
        conn.request("POST", path, body=payload, headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        return conn.getresponse()


def post_completion(url: str, body: dict[str, Any], timeout_s: float) -> tuple[int, bytes]:
    """One non-streamed /v1/completions request, read whole: its HTTP status and body."""
    parts = urllib.parse.urlsplit(url)
    conn = connection(parts, timeout_s)
    try:
        response = post(conn, parts.path.rstrip("/") + "/v1/completions", json.dumps(body).encode(), url, None)
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def _network_errors(timeout_s: float | None, when: str, *, stalled: str, broke: str) -> Iterator[None]:
    """A socket timeout as the cell's CellTimeout (when the cell has a timeout) or the backend's own (`stalled`); any
    other socket or HTTP error as a ServedBackendError (`broke`: what failed)."""
    try:
        yield
    except TimeoutError:
        if timeout_s is not None:
            raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} {when}") from None
        raise ServedBackendError(stalled) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ServedBackendError(f"{broke}: {exc}") from exc


def sse_events(response: http.client.HTTPResponse, url: str, timeout_s: float | None) -> Iterator[tuple[float, str]]:
    """Server-sent events as (arrival time, data), the time taken when the event's blank line arrived."""
    data: list[str] = []
    stalled, broke = f"{url} stalled mid-stream past the backend's timeout", f"{url} broke the stream"
    while True:
        with _network_errors(timeout_s, "while streaming", stalled=stalled, broke=broke):
            raw = response.readline()
        if not raw:  # end of the response
            if data:
                yield time.perf_counter(), "\n".join(data)
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield time.perf_counter(), "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # comments (":"), `event:`, `id:` and `retry:` lines carry nothing a completion needs


def json_events(response: http.client.HTTPResponse, url: str, timeout_s: float | None = None) -> Iterator[tuple[float, dict[str, Any]]]:
    """A completion stream's events as (arrival time, parsed JSON), up to `[DONE]`; a server-sent error event raises."""
    for arrived, data in sse_events(response, url, timeout_s):
        if data.strip() == "[DONE]":
            return
        event = parse_json(data, url)
        if event.get("error"):
            raise ServedBackendError(f"{url} sent an error event: {excerpt(json.dumps(event['error']).encode())}")
        yield arrived, event


def parse_json(data: str, url: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise ServedBackendError(f"{url} streamed an event that is not JSON: {data[:200]!r}") from None
    if not isinstance(value, dict):
        raise ServedBackendError(f"{url} streamed an event that is not a JSON object: {data[:200]!r}")
    return value


def excerpt(raw: bytes, limit: int = 500) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def get_json(url: str, path: str, timeout_s: float) -> Any:
    """GET `url``path` as JSON; None when the server has no such endpoint, or answers something else."""
    parts = urllib.parse.urlsplit(url)
    conn = connection(parts, timeout_s)
    try:
        conn.request("GET", parts.path.rstrip("/") + path)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    try:
        return json.loads(raw) if response.status == 200 else None
    except ValueError:
        return None
