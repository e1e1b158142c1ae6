"""The in-process transformers backend: greedy generation with prefill/decode timings and KV measurement.

A side's changes shape every run through one path: the cache they plan, what they do before a prompt and after its
prefill, the K/V they leave held, and whether prefixes and prompt-lookup drafts may be used; nothing here branches
on which kinds of change a side has.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

from ..capacity.kv_math import KvShape
from .contributions import Applied, build_cache
from .drafts import Drafts
from .kv_cache import cache_keyword
from .protocol import Backend, CellTimeout, Generation, StopCheck, decode_seconds

if TYPE_CHECKING:
    from ..changes.base import CachePlan
    from ..gate.spec import ModelSpec, VariantSpec
    from .prefix_reuse import PrefixStore

__all__ = ["Applied", "Backend", "CellTimeout", "Generation", "StopCheck", "TransformersBackend", "build_cache", "decode_seconds"]

_CPU_REUSE_CHUNK = 1024


class TransformersBackend:
    """A transformers causal LM run in this process; sides differ in what their changes apply to each run."""

    measures_logprob = True  # generate(expected=...) returns the answer log-probability

    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.device = next(model.parameters()).device
        self._cache_kw = cache_keyword(model)
        self._eos = self._eos_ids()
        self._applied_by_side: dict[Any, Applied] = {}

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

    def _applied(self, variant: VariantSpec) -> Applied:
        cached = self._applied_by_side.get(variant)
        if cached is None:
            cached = self._applied_by_side[variant] = Applied.of(variant)
        return cached

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
        expected: Sequence[str] = (),
    ) -> Generation:
        """Greedy-decode up to `max_new_tokens` (stopping at EOS) with the side's changes applied.

        Args:
            stop: called after each new token with the answer so far (decoded, special tokens skipped, not
                stripped); True ends generation there. Its own time counts in neither `decode_s_per_token` nor
                `total_s`. `hit_limit` is True only when `max_new_tokens` ended generation.
            reuse: caches of prompts run before. The longest common token prefix with a stored prompt of the same
                model and K/V-relevant changes is copied instead of prefilled (`reused_tokens`), and this prompt's
                cache is stored afterwards. Answers are a fresh run's (see prefix_reuse for the one numerical
                caveat); `prefill_s`, `total_s` and `peak_bytes` then describe only the part prefilled, so pass a
                store where answers alone count (a recall pass), never for timed cells. For the same reason the
                cache then trades memory for speed (`make_cache(answers_only=True)`: in-place appends, dequantized
                copies; attention reads the same values, and `kv_bytes` still counts the K/V alone).
            reuse_prefix: False runs the prompt from scratch exactly as without a store (timings honest: for a
                timed cell) and only stores its cache afterwards, for later prompts to reuse.
            expected: the task's expected values; `answer_logprob` is the sum of each one's log-probability
                teacher-forced right after the prompt, on this very cache (after the changes' eviction), measured
                after the timings end so it costs them nothing.

        Raises CellTimeout once `timeout_s` has passed (checked after prefill and after each decode step).
        """
        import torch

        from .kv_cache import cache_nbytes, cache_tensors, crop_to, croppable, held_tokens, reuse_scope

        side = self._applied(variant)
        prompt = tuple(token_ids)
        answers_only = reuse is not None and reuse_prefix
        cache = build_cache(side.cache, self.model.config, answers_only=answers_only)
        side.before_prompt(self.model)
        scope = reuse_scope(cache) if reuse is not None and side.reuse != "never" else None
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
                hit = reuse.lookup(key, prompt, exact_only=scope == "exact" or side.reuse == "exact")
                if hit is not None:
                    cache, reused = hit.cache, hit.tokens
            first_logits = self._prefill_with(side.cache, prompt[reused:], cache, after_reuse=reused > 0)
            side.after_prefill(cache)
            token = int(first_logits.argmax())
            self._sync()
            first = time.perf_counter()
            checking = 0.0  # seconds spent in `stop` (and keeping a snapshot), kept out of the timings
            snapshot = None
            if expected and not croppable(cache):
                held_start = time.perf_counter()
                snapshot = copy.deepcopy(cache)  # a window cache cannot be cropped back to the prompt afterwards
                checking += time.perf_counter() - held_start
            held_after_prompt = cache.get_seq_length()
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

            # Answers only, when every change allows it: greedy drafts from prompt lookup, verified in one pass.
            drafts = Drafts(prompt) if answers_only and side.drafts else None
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
                if side.decode_delay:
                    self._sync()
                    time.sleep(side.decode_delay * (time.perf_counter() - step_start))
                per_token.extend([(time.perf_counter() - step_start) / len(new_tokens)] * len(new_tokens))
                finished = any(ends_with(t) for t in new_tokens)  # any() stops at the token that ends it
            if drafts is not None:
                # Accepted drafts past the end: keep what a token-by-token run holds (all but the last new token).
                crop_to(cache, len(prompt) + len(generated) - 1)
            self._sync()
            end = time.perf_counter() - checking
            # A planted memory regression holds real extra copies of the cache while it is measured.
            shadow = [t.clone() for _ in range(side.kv_copies - 1) for t in cache_tensors(cache)]
            kv_tokens = held_tokens(cache)
            kv_bytes = cache_nbytes(cache) + sum(t.nbytes for t in shadow)
            del shadow
            peak = int(torch.cuda.max_memory_allocated(self.device)) if on_cuda else None
            logprob = None
            if expected:
                if snapshot is None:
                    crop_to(cache, held_after_prompt)
                logprob = self._answer_logprob(first_logits, snapshot if snapshot is not None else cache,
                                               len(prompt), expected, restore=held_after_prompt if snapshot is None else None)
        if deadline is not None and end > deadline:
            raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g}")
        if scope is not None:
            assert reuse is not None
            crop_to(cache, len(prompt))  # later prompts share the prompt, not this answer
            reuse.put(key, prompt, cache)
        return Generation(
            answer=self._answer_text(generated).strip(),
            new_tokens=len(generated),
            prefill_s=first - start,
            decode_s_per_token=decode_seconds(per_token[: len(generated) - 1]),
            total_s=end - start,
            kv_bytes=kv_bytes,
            kv_bytes_analytic=self._analytic_bytes(side, side.kv_tokens(len(prompt), len(generated))),
            kv_tokens=kv_tokens,
            peak_bytes=peak,
            hit_limit=not stopped and generated[-1] not in self._eos,
            reused_tokens=reused,
            answer_logprob=logprob,
        )

    def _prefill_with(self, plan: CachePlan, token_ids: Sequence[int], cache: Any, *, after_reuse: bool) -> Any:
        """The next-token logits after the prompt, through the prefill the cache plan needs: a window's chunks with
        a mask per chunk (so every prompt token already sees only its window and sinks), or the plain one."""
        if plan.window is not None and plan.factory is None:
            import torch

            from ..changes.window import windowed_prefill

            ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
            return windowed_prefill(self.model, ids, cache, window=plan.window)[0]
        return self._prefill(token_ids, cache, after_reuse=after_reuse)

    def _analytic_bytes(self, side: Applied, tokens: int) -> int:
        from .kv_cache import bytes_per_element

        plan = side.cache
        elem = bytes_per_element(plan.kv_cache_dtype, self.model.dtype)
        return self.kv_shape.sequence_bytes(tokens, elem, scale=plan.kv_scale if plan.quantized else None) * side.kv_copies

    def _answer_logprob(self, first_logits: Any, cache: Any, prompt_tokens: int, expected: Sequence[str], *,
                        restore: int | None) -> float:
        """Sum over `expected` of log p(value | prompt): each value's tokens teacher-forced after the prompt.

        `cache` holds the prompt as the run left it after prefill (evictions included). A croppable cache takes all
        of a value's tokens in one pass and is cropped back to `restore` after each; a windowed one (a snapshot the
        caller keeps) takes them one token at a time, which is exact for it, on a fresh copy per value.
        """
        import torch

        from .kv_cache import crop_to

        first = torch.log_softmax(first_logits.float(), dim=-1)
        total = 0.0
        for value in expected:
            ids = [int(t) for t in self.tokenizer.encode(value, add_special_tokens=False)]
            if not ids:
                continue
            total += float(first[ids[0]])
            if len(ids) == 1:
                continue
            if restore is not None:
                positions = torch.arange(prompt_tokens, prompt_tokens + len(ids) - 1, device=self.device)[None]
                feed = torch.tensor([ids[:-1]], dtype=torch.long, device=self.device)
                logits = self.model(input_ids=feed, position_ids=positions, use_cache=True,
                                    **{self._cache_kw: cache}).logits[0]
                crop_to(cache, restore)
            else:
                work = copy.deepcopy(cache)
                rows = [self._forward(torch.tensor([[t]], dtype=torch.long, device=self.device), work,
                                      last_only=False, position=prompt_tokens + i) for i, t in enumerate(ids[:-1])]
                logits = torch.cat([r[None] if r.dim() == 1 else r for r in rows])
            steps = torch.log_softmax(logits.float(), dim=-1)
            total += float(sum(steps[i, t] for i, t in enumerate(ids[1:])))
        return total

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

        For CUDA (see `prefers_batches`), and for sides whose changes all allow it (`Change.batch`: not a window,
        a position-dependent RoPE or a user's own cache). Rows need no padding, so no attention mask: row i attends
        to row i alone, exactly as in a single run. A row that has finished is still fed (its outputs ignored) so
        that the batch keeps its shape. Per row: answer, new_tokens, hit_limit, and the KV bytes and tokens of that
        row's own sequence; `prefill_s`, `decode_s_per_token`, `total_s` and `peak_bytes` are the batch's.

        Args:
            stop: one check for every row, or one per row (None for none), as in `generate`.
        """
        import torch

        from .kv_cache import cache_tensors, sequence_nbytes

        side = self._applied(variant)
        if not side.batch:
            names = ", ".join(c.kind for c in side.changes if not c.batch)
            raise ValueError(f"generate_batch cannot apply {names} to a batch of prompts; use generate")
        rows = [tuple(p) for p in prompts]
        if not rows:
            return []
        length = len(rows[0])
        if any(len(r) != length for r in rows):
            raise ValueError(f"generate_batch needs prompts of one token count, got {sorted({len(r) for r in rows})}")
        checks = list(stop) if isinstance(stop, Sequence) else [stop] * len(rows)
        if len(checks) != len(rows):
            raise ValueError(f"give one stop check per prompt ({len(rows)}), got {len(checks)}")
        cache = build_cache(side.cache, self.model.config)
        side.before_prompt(self.model)
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
            side.after_prefill(cache)
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
                if side.decode_delay:
                    self._sync()
                    time.sleep(side.decode_delay * (time.perf_counter() - step_start))
                step_seconds.append(time.perf_counter() - step_start)
            self._sync()
            end = time.perf_counter() - checking
            shadow = [t.clone() for _ in range(side.kv_copies - 1) for t in cache_tensors(cache)]
            del shadow  # held while measured, as in `generate`; each row counts its share below
            peak = int(torch.cuda.max_memory_allocated(self.device)) if on_cuda else None
        if deadline is not None and end > deadline:
            raise CellTimeout(f"batch exceeded cell_timeout_s={timeout_s:g}")
        cache_tokens = cache.get_seq_length()
        longest = max(len(g) for g in generated)
        results = []
        for i, gen in enumerate(generated):
            # The cache grew by one position per step for every row; this row's own ended when it finished.
            kv_tokens = cache_tokens - (longest - len(gen))
            results.append(Generation(
                answer=self._answer_text(gen).strip(),
                new_tokens=len(gen),
                prefill_s=first - start,
                decode_s_per_token=decode_seconds(step_seconds[: len(gen) - 1]),
                total_s=end - start,
                kv_bytes=sequence_nbytes(cache, i, kv_tokens) * side.kv_copies,
                kv_bytes_analytic=self._analytic_bytes(side, kv_tokens),
                kv_tokens=kv_tokens,
                peak_bytes=peak,
                hit_limit=not stopped[i] and gen[-1] not in self._eos,
            ))
        return results
