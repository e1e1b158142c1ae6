"""Reading a gate file into plain data within bounded time and memory: its size, its encoding, and YAML whose
aliases, nesting, duplicate keys and non-finite numbers are refused before anything is built from it."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import (
    MAX_EXPANDED_CHARS,
    MAX_FILE_BYTES,
    MAX_SCALAR_CHARS,
    MAX_YAML_ALIASES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    shown,
    shown_key,
)

_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BUILT_HERE = tuple(f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "null", "timestamp", "binary"))
_MAX_INT_CHARS = 40  # no key takes a whole number near 10**39; Python refuses to parse ints of 4301+ digits


class DocumentError(ValueError):
    """A gate file refused before its keys are read: `key` is the dotted path where it went wrong ("" for none)."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"key '{key}': {problem}. Fix: {fix}" if key else f"{problem}. Fix: {fix}")
        self.key, self.problem, self.fix = key, problem, fix


def read_gate_bytes(path: Path) -> bytes:
    """The file's bytes; a file that is not a regular file, or is over MAX_FILE_BYTES, is refused unread.

    Raises:
        OSError: when the file cannot be opened or read.
        DocumentError: for a device, a FIFO or a directory, or a file over the size limit.
    """
    # Non-blocking, so that a FIFO named as the gate is refused instead of waiting for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)  # of the file opened, not of whatever the path names by now
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError("", "is not a regular file", "pass a YAML file to --longctx-gate")
        if info.st_size > MAX_FILE_BYTES:
            raise DocumentError("", f"is {info.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for a gate file",
                                "keep the gate to its settings (see docs/limits.md)")
        data = handle.read(MAX_FILE_BYTES + 1)  # a file that grew since fstat is still cut at the limit
    if len(data) > MAX_FILE_BYTES:
        raise DocumentError("", f"is over the {MAX_FILE_BYTES:,}-byte limit for a gate file", "keep the gate to its settings")
    return data


def decode_gate_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DocumentError("", f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
                            "save the file as UTF-8") from None


def load_yaml(text: str) -> Any:
    """Parse one YAML document with the safe loader (libyaml's where available), after a scan of its events
    that refuses what would make building it, or walking it, unbounded.

    Raises:
        DocumentError: naming the dotted key where a limit was passed, a key repeated, or a number not finite.
        yaml.YAMLError: for text that is not YAML (with its line and column).
    """
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    _Scan(loader_class("")).run(yaml.parse(text, Loader=loader_class))
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    except (ValueError, TypeError, OverflowError) as exc:  # a constructor's own error (a date out of range...)
        raise DocumentError("", f"a value cannot be read ({shown(str(exc))})", "write plain numbers, strings, lists and mappings") from None
    finally:
        loader.dispose()


@dataclass
class _Frame:
    """An open list or mapping while scanning: where it is, what it has seen, its size so far."""

    kind: str  # "map" or "seq"
    path: str
    anchor: str | None
    weight: int = 1
    index: int = 0
    key: str | None = None  # the key whose value comes next (maps)
    expect_key: bool = True
    keys: set[tuple[str, str]] = field(default_factory=set)


class _Scan:
    """One pass over the parser's events: nodes, depth, aliases, expanded size, duplicate keys, odd scalars."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver  # a loader instance, for `resolve` (the tag a plain scalar gets) and float parsing
        self.stack: list[_Frame] = []
        self.anchors: dict[str, int] = {}  # anchor -> its expanded weight, once its node is complete
        self.open_anchors: set[str] = set()
        self.nodes = self.aliases = self.expanded = 0

    def run(self, events: Any) -> None:
        import yaml

        for event in events:
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                self._node(event)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                frame = self.stack.pop()
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = frame.weight
                    self.open_anchors.discard(frame.anchor)
                self._done(frame.weight, is_key_of_parent=False)

    def _where(self) -> str:
        """The dotted path of the node the next event is: `sweep.lengths[2]`, `baseline.model`."""
        if not self.stack:
            return ""
        top = self.stack[-1]
        if top.kind == "seq":
            return f"{top.path}[{top.index}]"
        if top.expect_key:
            return top.path
        return f"{top.path}.{top.key}" if top.path else str(top.key)

    def _node(self, event: Any) -> None:
        import yaml

        where = self._where()
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise DocumentError(where, f"the file has over {MAX_YAML_NODES:,} values", "keep the gate to its settings (see docs/limits.md)")
        is_key = bool(self.stack) and self.stack[-1].kind == "map" and self.stack[-1].expect_key
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise DocumentError(where, f"the file uses over {MAX_YAML_ALIASES} aliases (*name)", "write the values out, or share fewer")
            if event.anchor in self.open_anchors:
                raise DocumentError(where, f"alias *{shown_key(event.anchor)} refers to a value that contains it",
                                    "remove the recursive alias")
            # An undefined alias is left to the composer, which names its line.
            weight = self.anchors.get(event.anchor, 1)
            self._grow(weight, where)
            self._done(weight, is_key_of_parent=is_key, key_text="*" + str(event.anchor))
            return
        if isinstance(event, yaml.ScalarEvent):
            self._scalar(event, where, is_key)
            return
        if len(self.stack) >= MAX_YAML_DEPTH:
            raise DocumentError(where, f"lists and mappings are nested over {MAX_YAML_DEPTH} deep", "flatten the value")
        if is_key:
            raise DocumentError(where, "a list or mapping is used as a key", "use a plain name as the key")
        kind = "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self._grow(1, where)
        self.stack.append(_Frame(kind, where, event.anchor))

    def _scalar(self, event: Any, where: str, is_key: bool) -> None:
        import yaml

        value = event.value
        if len(value) > MAX_SCALAR_CHARS:
            raise DocumentError(where, f"a value of {len(value):,} characters is over the {MAX_SCALAR_CHARS:,}-character limit",
                                "shorten it")
        tag = event.tag if event.tag not in (None, "!") else self.resolver.resolve(yaml.ScalarNode, value, event.implicit)
        if event.tag == "!":
            tag = "tag:yaml.org,2002:str"
        if tag == _INT_TAG and len(value.lstrip("+-0").replace("_", "")) > _MAX_INT_CHARS:
            raise DocumentError(where, f"the whole number {shown(value)} is far too large for any key", "write the number the key means")
        if tag in _BUILT_HERE:
            # Built now, where the key is known, rather than by the loader later: a date out of range or bad
            # base64 is named by its key, and .nan/.inf are refused whatever key they are under.
            try:
                built = self.resolver.yaml_constructors[tag](self.resolver, yaml.ScalarNode(tag, value))
            except (ValueError, TypeError, OverflowError, yaml.YAMLError) as exc:
                kind = tag.rsplit(":", 1)[-1]
                raise DocumentError(where, f"{shown(value)} is not a valid {kind} ({shown(str(exc))})",
                                    f"write a valid {kind}, or quote the text") from None
            if isinstance(built, float) and not math.isfinite(built):
                raise DocumentError(where, f"{value} is not a finite number", "write a plain number such as 0.5")
        weight = 1 + len(value)
        if event.anchor is not None:
            self.anchors[event.anchor] = weight
        self._grow(weight, where)
        self._done(weight, is_key_of_parent=is_key, key_text=value, key_tag=tag)

    def _grow(self, weight: int, where: str) -> None:
        self.expanded += weight
        if self.expanded > MAX_EXPANDED_CHARS:
            raise DocumentError(where, f"aliases expand the document past {MAX_EXPANDED_CHARS:,} characters",
                                "write the values out, or use fewer aliases")

    def _done(self, weight: int, *, is_key_of_parent: bool, key_text: str = "?", key_tag: str = "") -> None:
        """A node is complete: add its weight to its parent and move the parent on (key -> value -> key)."""
        if not self.stack:
            return
        parent = self.stack[-1]
        parent.weight += weight
        if parent.kind == "seq":
            parent.index += 1
        elif parent.expect_key:
            if key_tag != _MERGE_TAG:
                identity = (key_tag, key_text)
                if identity in parent.keys:
                    dotted = f"{parent.path}.{shown_key(key_text)}" if parent.path else shown_key(key_text)
                    raise DocumentError(dotted, "is given twice in the same mapping", "keep one (YAML would silently keep the last)")
                parent.keys.add(identity)
            parent.key, parent.expect_key = shown_key(key_text), False
        else:
            parent.expect_key = True
