"""HTTP for served models: connections, JSON posts and server-sent event streams, with errors that say where."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
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
    try:
        conn.request("POST", path, body=payload, headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        return conn.getresponse()
    except TimeoutError:
        if timeout_s is not None:
            raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} before the first token") from None
        raise ServedBackendError(f"{url}{path} sent no response within the backend's timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ServedBackendError(f"{url}{path} failed: {exc}") from exc


def sse_events(response: http.client.HTTPResponse, url: str, timeout_s: float | None) -> Iterator[tuple[float, str]]:
    """Server-sent events as (arrival time, data), the time taken when the event's blank line arrived."""
    data: list[str] = []
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            if timeout_s is not None:
                raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} while streaming") from None
            raise ServedBackendError(f"{url} stalled mid-stream past the backend's timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServedBackendError(f"{url} broke the stream: {exc}") from exc
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
