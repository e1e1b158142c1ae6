"""Choosing long context, retrieval or both for a workload, with each path's prefill tokens and KV bytes.

The decision, in order (`plan()` returns the reasons it applied):

1. The corpus fits when it leaves room in `context_limit` for the question and the answer.
2. Fits, fresh data, a large corpus (>= `large_corpus_tokens`) and no global reasoning -> `retrieval`: the corpus
   changes between queries, so no cached prefix survives and every query would prefill all of it, while the
   answer needs only the chunks that hold it.
3. Fits otherwise -> `long_context`: the model sees every token, nothing can be missed by a ranker, and repeated
   queries over a static corpus prefill it once and then only their questions (prefix reuse).
4. Does not fit and needs global reasoning -> `hybrid`: retrieve or filter, then fill the long-context budget
   (the usable context) with the best-ranked evidence in document order, so the answer still weighs as much of
   the corpus as fits.
5. Does not fit and needs no global reasoning -> `retrieval`: the top chunks carry the evidence.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .kv_budget import KvBudget, format_bytes
from .kv_math import KvShape

PathName = Literal["long_context", "retrieval", "hybrid"]
PATHS: tuple[PathName, ...] = ("long_context", "retrieval", "hybrid")
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
QUESTION_TOKENS = 64
ANSWER_TOKENS = 256
RETRIEVAL_TOKENS = 8 * 256  # retrieval's defaults: top_k 8 chunks of 256 tokens
LARGE_CORPUS_TOKENS = 32_768  # from here a per-query prefill of the whole corpus costs seconds, not milliseconds


@dataclass(frozen=True)
class PathCost:
    """What one path costs: per query, and over all the repeated queries."""

    path: PathName
    context_tokens: int  # corpus tokens the prompt carries
    prefill_tokens: int  # one query: the context and the question
    kv_bytes: int  # one query's KV cache once its answer is generated
    fits: bool  # whether prompt and answer fit the context limit
    prefix_reused: bool  # whether the queries share the context as a cached prefix
    prefill_tokens_all: int  # every query, the shared prefix prefilled once where it is reused
    kv_bytes_all: int  # every query held at once, the shared prefix's KV held once where it is reused

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """The recommended path, the reasons for it, and the cost of every path."""

    recommendation: PathName
    reasons: tuple[str, ...]
    corpus_tokens: int
    context_limit: int
    usable_tokens: int  # the context limit less the question and the answer
    global_reasoning: bool
    fresh_data: bool
    repeated_queries: int
    kv: KvBudget
    model: str | None  # the model reference the KV shape came from, if any
    costs: tuple[PathCost, ...]

    @property
    def fits(self) -> bool:
        return self.corpus_tokens <= self.usable_tokens

    def cost(self, path: PathName) -> PathCost:
        return next(c for c in self.costs if c.path == path)

    def to_dict(self) -> dict[str, Any]:
        shape = self.kv.shape
        return {
            "recommendation": self.recommendation, "reasons": list(self.reasons),
            "corpus_tokens": self.corpus_tokens, "context_limit": self.context_limit, "usable_tokens": self.usable_tokens,
            "fits": self.fits, "global_reasoning": self.global_reasoning, "fresh_data": self.fresh_data,
            "repeated_queries": self.repeated_queries, "model": self.model,
            "kv": {"layers": shape.layers, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "dtype": self.kv.dtype},
            "paths": {c.path: c.to_dict() for c in self.costs},
        }


def plan(
    corpus_tokens: int,
    context_limit: int,
    *,
    global_reasoning: bool,
    fresh_data: bool,
    repeated_queries: int = 1,
    kv_shape: KvShape | KvBudget | str | None = None,
    kv_dtype: str | None = None,
    question_tokens: int = QUESTION_TOKENS,
    answer_tokens: int = ANSWER_TOKENS,
    retrieval_tokens: int = RETRIEVAL_TOKENS,
    large_corpus_tokens: int = LARGE_CORPUS_TOKENS,
) -> Plan:
    """Recommend `long_context`, `retrieval` or `hybrid` for a corpus and a context limit (rules in the module doc).

    Args:
        corpus_tokens: tokens of the whole corpus (the haystack).
        context_limit: the model's (or the deployment's) context window in tokens.
        global_reasoning: the answer depends on evidence spread over the corpus (counting, comparing, summarising).
        fresh_data: the corpus changes between queries, so no cached prefix outlives a query.
        repeated_queries: queries asked over the same corpus.
        kv_shape: a `KvShape`, a `KvBudget`, or a model reference (`embedded:...`, a model directory, a .gguf
            file) read from its config alone; None is the embedded model.
        kv_dtype: the KV cache's element type; None is the budget's own (a config's dtype, else bf16).
        question_tokens, answer_tokens: the headroom each query needs beside the corpus.
        retrieval_tokens: the context retrieval puts into the prompt (top_k x chunk_tokens).
        large_corpus_tokens: from this size, re-prefilling the corpus for each fresh query is worth avoiding.
    """
    positive = {"corpus_tokens": corpus_tokens, "context_limit": context_limit, "repeated_queries": repeated_queries,
                "retrieval_tokens": retrieval_tokens, "large_corpus_tokens": large_corpus_tokens}
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("question_tokens", question_tokens), ("answer_tokens", answer_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    usable = context_limit - question_tokens - answer_tokens
    if usable < 1:
        raise ValueError(f"a context limit of {context_limit} tokens leaves no room beside the question ({question_tokens}) "
                         f"and the answer ({answer_tokens})")
    kv, model = _budget(kv_shape, kv_dtype)
    fits = corpus_tokens <= usable
    reuse = repeated_queries > 1 and not fresh_data
    contexts: dict[PathName, int] = {
        "long_context": corpus_tokens,
        "retrieval": min(retrieval_tokens, corpus_tokens, usable),
        "hybrid": min(corpus_tokens, usable),
    }
    costs = tuple(
        _cost(path, contexts[path], kv, question_tokens=question_tokens, answer_tokens=answer_tokens,
              context_limit=context_limit, queries=repeated_queries, shared=reuse and path == "long_context")
        for path in PATHS
    )
    by_path = {c.path: c for c in costs}
    recommendation, reasons = _decide(
        corpus_tokens=corpus_tokens, context_limit=context_limit, usable=usable, fits=fits,
        global_reasoning=global_reasoning, fresh_data=fresh_data, large=corpus_tokens >= large_corpus_tokens,
        queries=repeated_queries, question_tokens=question_tokens, answer_tokens=answer_tokens, costs=by_path,
    )
    return Plan(recommendation, tuple(reasons), corpus_tokens, context_limit, usable, global_reasoning, fresh_data,
                repeated_queries, kv, model, costs)


def _cost(path: PathName, context: int, kv: KvBudget, *, question_tokens: int, answer_tokens: int, context_limit: int,
          queries: int, shared: bool) -> PathCost:
    prefill = context + question_tokens
    one = kv.sequence_bytes(prefill + answer_tokens)
    if shared:
        reuse = kv.prefix_reuse(context, queries, suffix_tokens=question_tokens)
        prefill_all, kv_all = reuse.prefill_tokens_with, queries * one - reuse.kv_bytes_saved
    else:
        prefill_all, kv_all = queries * prefill, queries * one
    return PathCost(path, context, prefill, one, prefill + answer_tokens <= context_limit, shared, prefill_all, kv_all)


def _decide(
    *, corpus_tokens: int, context_limit: int, usable: int, fits: bool, global_reasoning: bool, fresh_data: bool,
    large: bool, queries: int, question_tokens: int, answer_tokens: int, costs: dict[PathName, PathCost],
) -> tuple[PathName, list[str]]:
    long, retrieval, hybrid = costs["long_context"], costs["retrieval"], costs["hybrid"]
    room = f"room for the question ({question_tokens:,}) and the answer ({answer_tokens:,})"
    if fits:
        first = f"the corpus ({corpus_tokens:,} tokens) fits the {context_limit:,}-token context limit with {room}"
        if fresh_data and large and not global_reasoning:
            return "retrieval", [
                first,
                (f"but the data is fresh: the corpus changes between queries, so no cached prefix survives and each "
                 f"query would prefill all {long.prefill_tokens:,} tokens ({format_bytes(long.kv_bytes)} of KV)"),
                (f"no global reasoning is needed, so the top chunks carry the evidence: {retrieval.prefill_tokens:,} "
                 f"tokens of prefill and {format_bytes(retrieval.kv_bytes)} of KV per query"),
            ]
        reasons = [first + ": the model sees every token and no ranker can miss the evidence"]
        if global_reasoning:
            reasons.append("the task needs global reasoning over the whole corpus, which only the full context gives")
        if long.prefix_reused:
            saved = long.prefill_tokens * queries - long.prefill_tokens_all
            reasons.append(
                f"{queries} queries share the corpus as a prefix: prefill it once, then only each question: "
                f"{long.prefill_tokens_all:,} prefill tokens instead of {long.prefill_tokens * queries:,} "
                f"({saved / (long.prefill_tokens * queries):.0%} saved)"
            )
        elif fresh_data:
            reasons.append(f"the data is fresh, so each query prefills the corpus again ({long.prefill_tokens:,} tokens); "
                           + ("global reasoning needs all of it" if global_reasoning else
                              "it is small enough that this is cheap"))
        if large and not global_reasoning:
            reasons.append(f"retrieval would prefill {retrieval.prefill_tokens:,} tokens per query; worth a gate run "
                           f"if latency matters more than recall")
        return "long_context", reasons
    first = f"the corpus ({corpus_tokens:,} tokens) does not fit the {context_limit:,}-token context limit with {room}: " \
            f"{usable:,} tokens are usable"
    if global_reasoning:
        return "hybrid", [
            first,
            ("the task needs global reasoning, so the top few chunks would drop evidence it must weigh: retrieve or "
             f"filter, then fill the {usable:,}-token long-context budget with the best-ranked evidence in document "
             f"order (retrieval: {{method: hybrid, budget_tokens: {usable}}})"),
            f"prefill per query: {hybrid.prefill_tokens:,} tokens and {format_bytes(hybrid.kv_bytes)} of KV",
        ]
    return "retrieval", [
        first,
        (f"no global reasoning is needed, so the top chunks carry the evidence: {retrieval.prefill_tokens:,} tokens of "
         f"prefill and {format_bytes(retrieval.kv_bytes)} of KV per query"),
    ]


# --- the KV shape of a model, from its config alone ------------------------------------------------------


def _budget(kv_shape: KvShape | KvBudget | str | None, dtype: str | None) -> tuple[KvBudget, str | None]:
    if isinstance(kv_shape, KvBudget):
        return (kv_shape if dtype is None else kv_shape.with_dtype(dtype)), None
    if isinstance(kv_shape, KvShape):
        return KvBudget(kv_shape, dtype or "bf16"), None
    ref = kv_shape or DEFAULT_MODEL
    return model_kv_budget(ref, dtype=dtype), ref


def model_kv_budget(ref: str, *, dtype: str | None = None) -> KvBudget:
    """The KV budget of a model reference from its config.json or GGUF header: no weights, no transformers import.

    GGUF headers give no per-layer attention kinds, so a GGUF model counts as full attention on every layer.
    """
    from ..backends.loading import resolve

    resolved = resolve(ref)
    if resolved.kind == "gguf":
        assert resolved.gguf_path is not None
        return KvBudget.from_config(gguf_config(resolved.gguf_path), dtype=dtype)
    if resolved.kind == "directory":
        return KvBudget.from_json(Path(resolved.location) / "config.json", dtype=dtype)
    raise ValueError(f"{ref} is a hub id: pass a local model directory, a .gguf file, or the shape itself")


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_config(path: str | Path) -> dict[str, Any]:
    """The attention dimensions in a GGUF file's metadata, under config.json names (only the header is read).

    `gguf.GGUFReader` would also parse the tokenizer's vocabulary arrays, seconds for a config of five numbers.
    """
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        (version,) = _unpack(handle, "<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        _, count = _unpack(handle, "<QQ")
        meta = {}
        for _ in range(count):
            key = _gguf_string(handle)
            (kind,) = _unpack(handle, "<I")
            meta[key] = _gguf_value(handle, kind)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if isinstance(kv_heads, list):
        raise ValueError(f"{path}: KV heads differ by layer; pass --layers/--kv-heads/--head-dim")
    return {
        "num_hidden_layers": meta.get(f"{arch}.block_count"),
        "num_attention_heads": meta.get(f"{arch}.attention.head_count"),
        "num_key_value_heads": kv_heads,
        "hidden_size": meta.get(f"{arch}.embedding_length"),
        "head_dim": meta.get(f"{arch}.attention.key_length"),
    }


def _unpack(handle: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("the GGUF header ends early")
    return struct.unpack(fmt, data)


def _gguf_string(handle: BinaryIO) -> str:
    (length,) = _unpack(handle, "<Q")
    return handle.read(length).decode("utf-8", errors="replace")


def _gguf_value(handle: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        return _unpack(handle, _GGUF_SCALARS[kind])[0]
    if kind == _GGUF_STRING:
        return _gguf_string(handle)
    if kind != _GGUF_ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = _unpack(handle, "<IQ")
    if item in _GGUF_SCALARS and count <= 4096:
        return [_unpack(handle, _GGUF_SCALARS[item])[0] for _ in range(count)]
    if item in _GGUF_SCALARS:  # a long numeric array (token scores, types): skipped, not needed for the shape
        handle.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
        return None
    for _ in range(count):  # strings (the vocabulary, merges) or nested arrays: walked past
        _gguf_value(handle, item)
    return None


# --- rendering -------------------------------------------------------------------------------------------


def render_plan(result: Plan) -> list[str]:
    """The lines `longctx plan` prints: the recommendation, its reasons, and a table of each path's cost."""
    lines = [f"recommendation: {result.recommendation}"]
    lines += [f"  - {reason}" for reason in result.reasons]
    queries = result.repeated_queries
    header = ["path", "context", "prefill/query", "KV/query"]
    if queries > 1:
        header += [f"prefill x{queries}", f"KV x{queries}"]
    rows = [header]
    for c in result.costs:
        path = c.path + ("" if c.fits else " (over limit)")
        row = [path, f"{c.context_tokens:,}", f"{c.prefill_tokens:,}", format_bytes(c.kv_bytes)]
        if queries > 1:
            row += [f"{c.prefill_tokens_all:,}" + (" (prefix reused)" if c.prefix_reused else ""), format_bytes(c.kv_bytes_all)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    shape = result.kv.shape
    source = f"{result.model}: " if result.model else ""
    lines.append(f"KV: {source}{shape.layers} layers x {shape.kv_heads} KV heads x head dim {shape.head_dim}, {result.kv.dtype}")
    return lines
