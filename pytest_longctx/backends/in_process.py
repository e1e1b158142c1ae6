"""The in-process transformers backend: greedy generation with prefill/decode timings and KV measurement."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..gate.spec import ModelSpec, VariantSpec
from ..capacity.kv_math import KvShape

if TYPE_CHECKING:
    from .prefix_reuse import PrefixStore

StopCheck = Callable[[str], bool]


@dataclass(frozen=True)
class Generation:
    """One greedy completion of one prompt, with what it cost."""

    answer: str
    new_tokens: int
    prefill_s: float
    decode_s_per_token: float | None
    total_s: float
    kv_bytes: int
    kv_bytes_analytic: int
    kv_tokens: int
    peak_bytes: int | None
    hit_limit: bool = False  # stopped by max_new_tokens, not by EOS or the stop check
    reused_tokens: int = 0  # prompt tokens whose K/V were copied from a stored prompt instead of prefilled


class Backend(Protocol):
    """What a gate needs from a model: its tokenizer, its KV shape, and timed greedy generation."""

    tokenizer: Any
    fingerprint: str

    @property
    def kv_shape(self) -> KvShape: ...

    def generate(
        self, token_ids: Sequence[int], *, variant: VariantSpec, max_new_tokens: int, timeout_s: float | None = None,
        stop: StopCheck | None = None,
    ) -> Generation: ...


_CPU_REUSE_CHUNK = 1024


def decode_seconds(per_token: Sequence[float]) -> float | None:
    """Decode seconds per output token: the median inter-token latency (as vLLM's benchmarks report it).

    The median, not the mean, so a run is not judged by the one step the OS preempted: on a shared runner
    one stalled step in a short answer moves the mean by more than a 10 % threshold. A slower kernel or a
    bigger cache to read slows every step, and moves the median as much as the mean.
    """
    import statistics

    return statistics.median(per_token) if per_token else None


def cache_keyword(model: Any) -> str:
    """The forward() keyword that takes a Cache: 5.24 renamed `past_key_values=` to `cache=`; 5.17 knows only the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class TransformersBackend:
    """A transformers causal LM run in this process; variants differ only in the cache they decode with."""

    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.device = next(model.parameters()).device
        self._cache_kw = cache_keyword(model)
        self._eos = self._eos_ids()

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersBackend:
        from .loading import load_model

        model, tokenizer, fingerprint = load_model(
            spec.ref, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code
        )
        return cls(model, tokenizer, fingerprint=fingerprint)

    @property
    def kv_shape(self) -> KvShape:
        return KvShape.from_config(self.model.config)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _forward(self, ids: Any, cache: Any, *, last_only: bool, position: int | None = None) -> Any:
        return self._forward_rows(ids, cache, last_only=last_only, position=position)[0]

    def _forward_rows(self, ids: Any, cache: Any, *, last_only: bool, position: int | None = None) -> Any:
        """Each row's next-token logits after feeding `ids` (rows x tokens) through the model with `cache`."""
        kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if last_only:
            kwargs["logits_to_keep"] = 1  # the prompt's other logits are never read; skipping them saves memory
        if position is not None:
            # Absolute positions, so RoPE stays right even when a window has evicted part of the cache.
            import torch

            kwargs["position_ids"] = torch.full((ids.shape[0], 1), position, dtype=torch.long, device=self.device)
        return self.model(input_ids=ids, **kwargs).logits[:, -1]

    def _prefill(self, token_ids: Sequence[int], cache: Any, *, after_reuse: bool) -> Any:
        """The next-token logits after feeding `token_ids` into `cache`: in one pass, except after a reused prefix on
        a CPU, where the rest goes in chunks of `_CPU_REUSE_CHUNK` tokens.

        Why: past a cached prefix the model passes SDPA an explicit mask, and the CPU kernel then computes every
        query against every key, masked ones too (a one-pass prompt uses `is_causal` and skips them). In chunks
        only each chunk's own triangle is wasted: the rest of a 4096-token prompt after 1024 reused tokens
        prefilled about 20% faster in 1024-token chunks than in one pass (SmolLM2-135M, one thread).
        """
        import torch

        step = _CPU_REUSE_CHUNK if after_reuse and self.device.type == "cpu" else len(token_ids)
        logits = None
        for start in range(0, len(token_ids), step):
            ids = torch.tensor([list(token_ids[start : start + step])], dtype=torch.long, device=self.device)
            logits = self._forward(ids, cache, last_only=True)
        return logits

    @property
    def prefers_batches(self) -> bool:
        """Whether cells of one token count should go through `generate_batch`: on CUDA a batch of prompts costs
        about what one does; on a CPU it costs their sum, so batching would only hold answers back."""
        return self.device.type == "cuda"

    def _answer_text(self, generated: Sequence[int]) -> str:
        return str(self.tokenizer.decode([t for t in generated if t not in self._eos], skip_special_tokens=True))

    def generate(
        self,
        token_ids: Sequence[int],
        *,
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None = None,
        stop: StopCheck | None = None,
        reuse: PrefixStore | None = None,
        reuse_prefix: bool = True,
    ) -> Generation:
        """Greedy-decode up to `max_new_tokens` (stopping at EOS) with the variant's KV cache.

        Args:
            stop: called after each new token with the answer so far (decoded, special tokens skipped, not
                stripped); True ends generation there. Its own time counts in neither `decode_s_per_token` nor
                `total_s`. `hit_limit` is True only when `max_new_tokens` ended generation.
            reuse: caches of prompts run before. The longest common token prefix with a stored prompt of the same
                model and K/V-relevant variant fields is copied instead of prefilled (`reused_tokens`), and this
                prompt's cache is stored afterwards. Answers are a fresh run's (see prefix_reuse for the one
                numerical caveat); `prefill_s`, `total_s` and `peak_bytes` then describe only the part prefilled,
                so pass a store where answers alone count (a recall pass), never for timed cells. For the same
                reason the cache then trades memory for speed (`make_cache(answers_only=True)`: in-place appends,
                dequantized copies; attention reads the same values, and `kv_bytes` still counts the K/V alone).
            reuse_prefix: False runs the prompt from scratch exactly as without a store (timings honest: for a
                timed cell) and only stores its cache afterwards, for later prompts to reuse.

        Raises CellTimeout once `timeout_s` has passed (checked after prefill and after each decode step).
        """
        import torch

        from .kv_cache import bytes_per_element, cache_nbytes, cache_tensors, crop_to, keep_last, make_cache, reuse_scope

        prompt = tuple(token_ids)
        answers_only = reuse is not None and reuse_prefix
        # Answers only: the cache may trade memory for speed (same values; see make_cache).
        window = variant.attention
        if window is not None:
            from ..changes.window import make_window_cache

            cache = make_window_cache(window, self.model.config, kv_cache_dtype=variant.kv_cache_dtype, kv_scale=variant.kv_scale)
        else:
            cache = make_cache(variant.kv_cache_dtype, self.model.config, kv_scale=variant.kv_scale, answers_only=answers_only)
        # Dynamic NTK remembers the longest sequence it saw; a fresh state per prompt keeps answers independent of
        # cell order, and makes a prefix's K/V depend on more than its own tokens, so it is never reused.
        position_dependent = variant.rope is not None and variant.rope.rope_type in ("dynamic", "longrope")
        if position_dependent:
            from ..changes.rope import reset_rope_state

            reset_rope_state(self.model)
        # A planted window evicts the prompt's start right after prefill: nothing of it is left to store (a real
        # window's layers are not reusable either: reuse_scope says None for them).
        scope = (
            reuse_scope(cache) if reuse is not None and variant.planted_window is None and not position_dependent else None
        )
        key = self._reuse_key(variant) if scope is not None else None
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        generated: list[int] = []
        reused = 0
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            deadline = None if timeout_s is None else start + timeout_s
            if scope is not None and reuse_prefix:
                assert reuse is not None
                hit = reuse.lookup(key, prompt, exact_only=scope == "exact")
                if hit is not None:
                    cache, reused = hit.cache, hit.tokens
            ids = torch.tensor([prompt[reused:]], dtype=torch.long, device=self.device)
            if window is not None:
                from ..changes.window import windowed_prefill

                # Chunked, with a mask per chunk, so every prompt token already sees only its window and sinks.
                token = int(windowed_prefill(self.model, ids, cache, window=window)[0].argmax())
            else:
                token = int(self._prefill(prompt[reused:], cache, after_reuse=reused > 0).argmax())
            if variant.planted_window is not None:
                keep_last(cache, variant.planted_window)
            self._sync()
            first = time.perf_counter()
            checking = 0.0  # seconds spent in `stop`, kept out of the timings
            stopped = False

            def ends_with(new: int) -> bool:
                """Append a new token; whether generation ends there (EOS, the stop check, the cap)."""
                nonlocal checking, stopped
                generated.append(new)
                if new in self._eos:
                    return True
                if stop is not None:
                    check_start = time.perf_counter()
                    stopped = bool(stop(self._answer_text(generated)))
                    checking += time.perf_counter() - check_start
                    if stopped:
                        return True
                return len(generated) >= max_new_tokens

            # Answers only, with a plain cache: greedy drafts from prompt lookup, verified in one pass (see _Drafts).
            drafts = (
                _Drafts(prompt)
                if answers_only and window is None and not position_dependent and variant.planted_window is None
                and not variant.planted_decode_delay
                else None
            )
            finished = ends_with(token)
            per_token: list[float] = []  # seconds of each decode step, per token it produced (stop checks excluded)
            while not finished:
                step_start = time.perf_counter()
                if deadline is not None and step_start - checking > deadline:
                    raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} after {len(generated)} new tokens")
                draft = drafts.propose(generated, max_new_tokens - len(generated) - 1) if drafts is not None else []
                if draft:
                    fed = len(prompt) + len(generated) - 1  # positions in the cache before this pass
                    ids = torch.tensor([[generated[-1], *draft]], dtype=torch.long, device=self.device)
                    kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
                    best = self.model(input_ids=ids, **kwargs).logits[0].argmax(-1).tolist()
                    accepted = next((i for i, t in enumerate(draft) if t != best[i]), len(draft))
                    crop_to(cache, fed + 1 + accepted)  # drop the K/V of rejected draft tokens
                    new_tokens = [*draft[:accepted], best[accepted]]
                else:
                    step = torch.tensor([[generated[-1]]], dtype=torch.long, device=self.device)
                    position = len(prompt) + len(generated) - 1
                    new_tokens = [int(self._forward(step, cache, last_only=False, position=position).argmax())]
                if variant.planted_decode_delay:
                    self._sync()
                    time.sleep(variant.planted_decode_delay * (time.perf_counter() - step_start))
                per_token.extend([(time.perf_counter() - step_start) / len(new_tokens)] * len(new_tokens))
                finished = any(ends_with(t) for t in new_tokens)  # any() stops at the token that ends it
            if drafts is not None:
                # Accepted drafts past the end: keep what a token-by-token run holds (all but the last new token).
                crop_to(cache, len(prompt) + len(generated) - 1)
            self._sync()
            end = time.perf_counter() - checking
            # A planted memory regression holds real extra copies of the cache while it is measured.
            shadow = [t.clone() for _ in range(variant.planted_kv_copies - 1) for t in cache_tensors(cache)]
        if deadline is not None and end > deadline:
            raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g}")
        decode_steps = len(generated) - 1
        if window is not None:
            from ..changes.window import stored_tokens

            # get_seq_length() counts every token seen; the window holds only its sinks and recent tokens.
            kv_tokens = stored_tokens(cache)
            analytic_tokens = window.kv_tokens(len(prompt) + len(generated) - 1)
        else:
            kv_tokens = analytic_tokens = cache.get_seq_length()
        kv_bytes = cache_nbytes(cache) + sum(t.nbytes for t in shadow)
        if scope is not None:
            assert reuse is not None
            crop_to(cache, len(prompt))  # later prompts share the prompt, not this answer
            reuse.put(key, prompt, cache)
        shape = self.kv_shape
        elem = bytes_per_element(variant.kv_cache_dtype, self.model.dtype)
        scale = None if variant.kv_cache_dtype == "auto" else variant.kv_scale
        return Generation(
            answer=self._answer_text(generated).strip(),
            new_tokens=len(generated),
            prefill_s=first - start,
            decode_s_per_token=decode_seconds(per_token[:decode_steps]),
            total_s=end - start,
            kv_bytes=kv_bytes,
            kv_bytes_analytic=shape.sequence_bytes(analytic_tokens, elem, scale=scale) * variant.planted_kv_copies,
            kv_tokens=kv_tokens,
            peak_bytes=int(torch.cuda.max_memory_allocated(self.device)) if on_cuda else None,
            hit_limit=not stopped and generated[-1] not in self._eos,
            reused_tokens=reused,
        )

    def _reuse_key(self, variant: VariantSpec) -> Hashable:
        from .prefix_reuse import variant_key

        # The model too: a store handed to two backends must not mix their caches.
        return (id(self.model), self.fingerprint, variant_key(variant))

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None = None,
        stop: StopCheck | Sequence[StopCheck | None] | None = None,
    ) -> list[Generation]:
        """Greedy-decode prompts of one token count as one batch; each row's answer is the one `generate` gives.

        For CUDA (see `prefers_batches`). Rows need no padding, so no attention mask: row i attends to row i
        alone, exactly as in a single run. A row that has finished is still fed (its outputs ignored) so that the
        batch keeps its shape. Per row: answer, new_tokens, hit_limit, and the KV bytes and tokens of that row's
        own sequence; `prefill_s`, `decode_s_per_token`, `total_s` and `peak_bytes` are the batch's.

        Args:
            stop: one check for every row, or one per row (None for none), as in `generate`.
        """
        import torch

        from .kv_cache import bytes_per_element, cache_tensors, keep_last, make_cache, sequence_nbytes

        if variant.attention is not None or (variant.rope is not None and variant.rope.rope_type in ("dynamic", "longrope")):
            raise ValueError("generate_batch does not apply attention windows or position-dependent RoPE; use generate")
        rows = [tuple(p) for p in prompts]
        if not rows:
            return []
        length = len(rows[0])
        if any(len(r) != length for r in rows):
            raise ValueError(f"generate_batch needs prompts of one token count, got {sorted({len(r) for r in rows})}")
        checks = list(stop) if isinstance(stop, Sequence) else [stop] * len(rows)
        if len(checks) != len(rows):
            raise ValueError(f"give one stop check per prompt ({len(rows)}), got {len(checks)}")
        cache = make_cache(variant.kv_cache_dtype, self.model.config, kv_scale=variant.kv_scale)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        generated: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        stopped = [False] * len(rows)
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            deadline = None if timeout_s is None else start + timeout_s
            ids = torch.tensor(rows, dtype=torch.long, device=self.device)
            tokens = self._forward_rows(ids, cache, last_only=True).argmax(-1).tolist()
            if variant.planted_window is not None:
                keep_last(cache, variant.planted_window)
            self._sync()
            first = time.perf_counter()
            checking = 0.0
            steps = 0
            step_seconds: list[float] = []  # each batched decode step (one token for every unfinished row)
            while True:
                for i, token in enumerate(tokens):
                    if done[i]:
                        continue
                    generated[i].append(token)
                    if token in self._eos:
                        done[i] = True
                        continue
                    check = checks[i]
                    if check is not None:
                        check_start = time.perf_counter()
                        stopped[i] = bool(check(self._answer_text(generated[i])))
                        checking += time.perf_counter() - check_start
                    done[i] = stopped[i] or len(generated[i]) >= max_new_tokens
                if all(done):
                    break
                step_start = time.perf_counter()
                if deadline is not None and step_start - checking > deadline:
                    raise CellTimeout(f"batch exceeded cell_timeout_s={timeout_s:g} after {steps + 1} new tokens")
                step = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device)
                tokens = self._forward_rows(step, cache, last_only=False, position=length + steps).argmax(-1).tolist()
                steps += 1
                if variant.planted_decode_delay:
                    self._sync()
                    time.sleep(variant.planted_decode_delay * (time.perf_counter() - step_start))
                step_seconds.append(time.perf_counter() - step_start)
            self._sync()
            end = time.perf_counter() - checking
            shadow_copies = variant.planted_kv_copies - 1
            shadow = [t.clone() for _ in range(shadow_copies) for t in cache_tensors(cache)]
        if deadline is not None and end > deadline:
            raise CellTimeout(f"batch exceeded cell_timeout_s={timeout_s:g}")
        del shadow  # held while measured, as in `generate`; each row counts its share below
        shape = self.kv_shape
        elem = bytes_per_element(variant.kv_cache_dtype, self.model.dtype)
        scale = None if variant.kv_cache_dtype == "auto" else variant.kv_scale
        cache_tokens = cache.get_seq_length()
        longest = max(len(g) for g in generated)
        results = []
        for i, gen in enumerate(generated):
            # The cache grew by one position per step for every row; this row's own ended when it finished.
            kv_tokens = cache_tokens - (longest - len(gen))
            decode_steps = len(gen) - 1
            results.append(Generation(
                answer=self._answer_text(gen).strip(),
                new_tokens=len(gen),
                prefill_s=first - start,
                decode_s_per_token=decode_seconds(step_seconds[:decode_steps]),
                total_s=end - start,
                kv_bytes=sequence_nbytes(cache, i, kv_tokens) * variant.planted_kv_copies,
                kv_bytes_analytic=shape.sequence_bytes(kv_tokens, elem, scale=scale) * variant.planted_kv_copies,
                kv_tokens=kv_tokens,
                peak_bytes=int(torch.cuda.max_memory_allocated(self.device)) if on_cuda else None,
                hit_limit=not stopped[i] and gen[-1] not in self._eos,
            ))
        return results


class _Drafts:
    """Draft tokens for greedy decoding by prompt lookup: what followed the latest earlier occurrence of the
    answer's last two tokens (or last one) in the prompt and answer so far.

    Why: needle answers copy the prompt (the needle line, the question, a log line), so most drafts are right. A
    draft is verified in one forward pass with the token before it, and the model's own greedy choices are kept:
    accepted draft tokens up to the first disagreement, then the model's token there. That is exactly greedy
    decoding, with one caveat, the one chunked prefill has: the pass computes several positions at once, so
    logits may differ in their last bits from one-at-a-time steps (benchmarks/sweep_vs_naive.py checks answers).
    """

    NGRAM = 2
    MAX_DRAFT = 10

    def __init__(self, prompt: Sequence[int]) -> None:
        self._prompt = list(prompt)
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end position of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in `_latest`

    def propose(self, generated: Sequence[int], limit: int) -> list[int]:
        tokens = self._prompt + list(generated)
        last = len(tokens) - 1
        for end in range(self._indexed, last):  # every position before the last one
            for n in range(1, self.NGRAM + 1):
                if end - n + 1 >= 0:
                    self._latest[tuple(tokens[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, last)
        for n in range(self.NGRAM, 0, -1):
            end = self._latest.get(tuple(tokens[last - n + 1 :]))
            if end is not None:
                return tokens[end + 1 : end + 1 + min(limit, self.MAX_DRAFT)]
        return []


class CellTimeout(TimeoutError):
    """A generation that ran past the gate's `cell_timeout_s`."""
