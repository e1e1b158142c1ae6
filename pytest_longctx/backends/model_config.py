"""A model's positions read without transformers or weights: its config.json (a directory, the hub cache) or the
metadata at the head of its GGUF file. What start-up checks compare swept lengths against."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .loading import ModelLoadError, ResolvedModel

# Config keys that hold the trained length, in the order transformers' configs use them.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_KEYS = 100_000  # a header claiming more is not one this reader trusts


@dataclass(frozen=True)
class ModelPositions:
    """The positions a model was trained for (None when its config does not say) and its own RoPE type."""

    max_position_embeddings: int | None
    rope_type: str | None
    source: str  # where they were read, for messages


def model_positions(resolved: ResolvedModel) -> ModelPositions:
    """Read the trained length of a resolved model reference; nothing heavier than a JSON file or a GGUF header.

    Raises:
        ModelLoadError: for a hub id whose config.json is not in the local Hugging Face cache (nothing is
            downloaded, so such a model could not load either).
    """
    if resolved.kind == "gguf":
        path = resolved.gguf_path
        assert path is not None
        return _gguf_positions(path)
    if resolved.kind == "directory":
        return _config_positions(Path(resolved.location) / "config.json")
    return _config_positions(_cached_hub_config(resolved.ref))


def _cached_hub_config(ref: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, "config.json")
    except ValueError:  # not a valid repo id
        found = None
    if not isinstance(found, str):  # None, or the marker of a file known to be absent
        raise ModelLoadError(
            f"{ref!r} is a hub id that is not in the local Hugging Face cache, and pytest-longctx never downloads; "
            f"fetch it first (`huggingface-cli download {ref}`), or point at a local directory or .gguf file"
        )
    return Path(found)


def _config_positions(path: Path) -> ModelPositions:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelPositions(None, None, str(path))  # the load reports an unreadable config with its own message
    if not isinstance(config, dict):
        return ModelPositions(None, None, str(path))
    if not any(k in config for k in _LENGTH_KEYS) and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # a multimodal model: the language model's own config
    length = next((config[k] for k in _LENGTH_KEYS if isinstance(config.get(k), int) and not isinstance(config.get(k), bool)), None)
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    rope_type = None
    if isinstance(rope, dict):
        kind = rope.get("rope_type", rope.get("type"))
        rope_type = kind if isinstance(kind, str) else None
    return ModelPositions(length if length and length > 0 else None, rope_type, str(path))


def _gguf_positions(path: Path) -> ModelPositions:
    """`<architecture>.context_length` from the GGUF's key-value header; the tensors are never read."""
    source = f"{path} (GGUF metadata)"
    try:
        with open(path, "rb") as handle:
            found = _gguf_header(handle)
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return ModelPositions(None, None, source)
    length = found.get("context_length")
    return ModelPositions(length if isinstance(length, int) and length > 0 else None, None, source)


def _gguf_header(handle: IO[bytes]) -> dict[str, Any]:
    def read(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = handle.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string() -> str:
        length = read("<Q")
        if length > 1 << 24:
            raise ValueError("implausible GGUF string")
        return handle.read(length).decode("utf-8")

    def skip(kind: int) -> None:
        if kind in _GGUF_SCALARS:
            handle.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
        elif kind == _GGUF_STRING:
            handle.seek(read("<Q"), 1)
        elif kind == _GGUF_ARRAY:
            item, count = read("<I"), read("<Q")
            if item in _GGUF_SCALARS:
                handle.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
            else:
                for _ in range(count):
                    skip(item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")

    if handle.read(4) != b"GGUF" or read("<I") < 2:  # version 1 used 32-bit counts; no current file is one
        raise ValueError("not a GGUF v2+ file")
    read("<Q")  # tensor count
    keys = read("<Q")
    if keys > _GGUF_MAX_KEYS:
        raise ValueError("implausible GGUF key count")
    lengths: dict[str, int] = {}  # "<architecture>.context_length" values, in case one comes before the architecture
    architecture: str | None = None
    for _ in range(keys):
        key, kind = string(), read("<I")
        if key == "general.architecture" and kind == _GGUF_STRING:
            architecture = string()
        elif key.endswith(".context_length") and kind in _GGUF_SCALARS:
            lengths[key] = int(read(_GGUF_SCALARS[kind]))
        else:
            skip(kind)
        if architecture is not None and f"{architecture}.context_length" in lengths:
            break  # the tokenizer's vocabulary, which follows, is not needed
    return {"context_length": lengths.get(f"{architecture}.context_length")} if architecture else {}
