"""Does the recall pass (prefix KV reuse + early stop) answer as a naive model.generate loop does, and how much faster?

Loads the gate's model once, builds the sweep's prompts, and runs both in one process, cell by cell (alternating
which side goes first, so that load drift on a shared machine hits both):

  recall: TransformersBackend.generate(..., stop=prompt.answer_complete, reuse=PrefixStore()), each variant's
          cells in reuse_order, one store throughout (with a store, generate runs for answers only: shared
          prefixes copied, the rest prefilled, caches appending in place, prompt-lookup drafts verified);
  naive:  model.generate from scratch on every prompt: greedy, the gate's max_new_tokens, the variant's cache
          object, EOS as the only stop.

What the recall pass guarantees, and what this checks: per cell, the same verdict of the task's scoring as plain
greedy decoding (found or not) and the same miss category, while its tokens agree with plain greedy decoding up to
near-ties. Why not token for token: prefix reuse and prompt-lookup drafts compute several positions in one forward
pass, so logits may differ from one-at-a-time steps in their last bits, and where the top two logits are that close
the greedy choice can flip (seen once in 60 cells of the default gate: '...07:5' vs '...07:2', both misses). The
naive tokens are trimmed to what early stop keeps (the shortest prefix ending in EOS or accepted by the task's
`answer_complete`), and that trimmed answer is scored as the recall pass scores its own (the same `hit_limit` rule),
so a category compares like with like. Ends with exactly one line:

    speedup=X.XX found_identical=A/N category_identical=B/N tokens_identical=C/N outside_forward=Y.Y%

The benchmark exits 1 unless found_identical and category_identical are N/N (the guarantee); tokens_identical is
reported, not required.

`outside_forward` is the share of the recall pass's wall time spent outside the model's forward calls (timed by
hooks on the model): the harness's own overhead.

    nice -n 5 python benchmarks/sweep_vs_naive.py [--gate gates/fp8.yaml]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_longctx.backends.in_process import TransformersBackend
from pytest_longctx.backends.kv_cache import cache_keyword, make_cache
from pytest_longctx.backends.prefix_reuse import PrefixStore, reuse_order
from pytest_longctx.gate.spec import VariantSpec, load_gate
from pytest_longctx.gate.sweep import Cell, build_prompt, plan_cells, task_spec
from pytest_longctx.tasks import TaskPrompt


@dataclass(frozen=True)
class Outcome:
    answer: str
    new_tokens: int
    found: bool
    failure: str | None


class ForwardClock:
    """Wall time inside the model's top-level forward calls, from hooks (generate's and ours alike)."""

    def __init__(self, model: Any) -> None:
        self.seconds = 0.0
        self._started = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started


def run_recall(
    backend: TransformersBackend, variant: VariantSpec, cells: Sequence[Cell], prompts: dict[Cell, TaskPrompt],
    max_new_tokens: int, store: PrefixStore,
) -> dict[Cell, Outcome]:
    out = {}
    for cell in cells:
        prompt = prompts[cell]
        gen = backend.generate(
            prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, stop=prompt.answer_complete, reuse=store
        )
        score = prompt.score(gen.answer, hit_limit=gen.hit_limit)
        out[cell] = Outcome(gen.answer, gen.new_tokens, score.found, score.failure)
    return out


def run_naive(
    backend: TransformersBackend, variant: VariantSpec, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> list[list[int]]:
    """Each prompt's generated token ids (up to and with the first EOS), from model.generate run from scratch."""
    import torch
    from transformers import GenerationConfig

    model = backend.model
    eos = sorted(backend._eos)
    # A fresh config: greedy with EOS as the only stop, none of the checkpoint's sampling or penalty defaults.
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0] if eos else None
    )
    out = []
    for token_ids in prompts:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=backend.device)
        cache = make_cache(variant.kv_cache_dtype, model.config, kv_scale=variant.kv_scale)
        with torch.inference_mode():
            seq = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                **{cache_keyword(model): cache},
            )
        new = seq[0, ids.shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in backend._eos), len(new))
        out.append(new[:end])
    return out


def trimmed(backend: TransformersBackend, tokens: list[int], stop: Callable[[str], bool]) -> list[int]:
    """The prefix of a full run's tokens that early stop would have produced: up to the first EOS, or the first
    token after which `stop` accepts the text so far, or all of them."""
    for i, token in enumerate(tokens, start=1):
        if token in backend._eos or stop(backend._answer_text(tokens[:i])):
            return tokens[:i]
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, default=Path(__file__).resolve().parents[1] / "gates" / "fp8.yaml")
    # One thread by default: on a shared 2-core machine, two OpenMP threads wait on each other whenever another
    # process holds a core (a 256-token forward of SmolLM2-135M took 7.3 s with two threads, 0.9 s with one).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides (0: torch's choice)")
    parser.add_argument("--min-reuse", type=int, default=64, help="shortest common prefix worth reusing, in tokens")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    gate = load_gate(args.gate)
    backend = TransformersBackend.load(gate.model)
    max_new_tokens = gate.sweep.max_new_tokens
    cells = plan_cells(gate.sweep)
    prompts = {
        v.name: {c: build_prompt(backend.tokenizer, task_spec(gate.sweep, c.task), c, v) for c in cells} for v in gate.variants
    }
    # Untimed warm-up of both paths, so neither pays one-off costs inside its timing.
    warm = prompts[gate.variants[0].name][cells[0]].token_ids[:64]
    for variant in gate.variants:
        backend.generate(warm, variant=variant, max_new_tokens=2)
        run_naive(backend, variant, [warm], 2)
    clock = ForwardClock(backend.model)

    store = PrefixStore(min_tokens=args.min_reuse)
    recall: dict[tuple[str, Cell], Outcome] = {}
    naive: dict[tuple[str, Cell], list[int]] = {}
    recall_s = naive_s = recall_forward_s = recall_cpu = naive_cpu = 0.0
    for variant in gate.variants:
        side_prompts = prompts[variant.name]
        ordered = reuse_order([(c, side_prompts[c].token_ids) for c in cells])
        for i, cell in enumerate(ordered):
            # Side by side cell by cell, alternating which goes first, so drift in the machine's load hits both.
            for side in ("recall", "naive") if i % 2 == 0 else ("naive", "recall"):
                forward_before = clock.seconds
                started, cpu_started = time.perf_counter(), time.process_time()
                if side == "recall":
                    got = run_recall(backend, variant, [cell], side_prompts, max_new_tokens, store)
                    recall_s += time.perf_counter() - started
                    recall_cpu += time.process_time() - cpu_started
                    recall_forward_s += clock.seconds - forward_before
                    recall[(variant.name, cell)] = got[cell]
                else:
                    (tokens,) = run_naive(backend, variant, [side_prompts[cell].token_ids], max_new_tokens)
                    naive_s += time.perf_counter() - started
                    naive_cpu += time.process_time() - cpu_started
                    naive[(variant.name, cell)] = tokens
            if (i + 1) % 10 == 0 or i + 1 == len(ordered):
                print(f"{variant.name}: {i + 1}/{len(ordered)} cells; recall {recall_s:.1f} s, naive {naive_s:.1f} s so far",
                      flush=True)

    same_found = same_failure = same_tokens = 0
    recall_tokens = naive_tokens = 0
    for (name, cell), outcome in recall.items():
        full = naive[(name, cell)]
        prompt = prompts[name][cell]
        kept = trimmed(backend, full, prompt.answer_complete)
        kept_answer = backend._answer_text(kept).strip()
        # Scored as the recall pass scores its own answer: the trimmed tokens, cut off only if they hit the cap.
        kept_hit_limit = len(kept) >= max_new_tokens and kept[-1] not in backend._eos
        naive_score = prompt.score(kept_answer, hit_limit=kept_hit_limit)
        tokens_agree = kept_answer == outcome.answer and len(kept) == outcome.new_tokens
        same_tokens += tokens_agree
        same_found += naive_score.found == outcome.found
        same_failure += naive_score.failure == outcome.failure
        recall_tokens += outcome.new_tokens
        naive_tokens += len(full)
        if not tokens_agree or naive_score.failure != outcome.failure:
            print(f"DIFFER {name} {cell.id}: recall {outcome.answer!r} ({outcome.new_tokens} tokens, found={outcome.found}, "
                  f"{outcome.failure}) naive kept {kept_answer!r} ({len(kept)} tokens, found={naive_score.found}, "
                  f"{naive_score.failure})")
    total_prompt = sum(len(p.token_ids) for side in prompts.values() for p in side.values())
    print(f"gate {gate.name}: {len(cells)} cells x {len(gate.variants)} variants, max_new_tokens={max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"recall pass: {recall_s:.1f} s (forward {recall_forward_s:.1f} s, CPU {recall_cpu:.1f} s), "
          f"reused {store.reused_tokens}/{total_prompt} "
          f"prompt tokens in {store.hits} hits, {recall_tokens} new tokens")
    print(f"naive loop:  {naive_s:.1f} s (CPU {naive_cpu:.1f} s, ratio {naive_cpu / recall_cpu:.2f}), {naive_tokens} new tokens")
    n = len(recall)
    outside = 100.0 * (recall_s - recall_forward_s) / recall_s
    print(f"speedup={naive_s / recall_s:.2f} found_identical={same_found}/{n} category_identical={same_failure}/{n} "
          f"tokens_identical={same_tokens}/{n} outside_forward={outside:.1f}%")
    return 0 if same_found == n and same_failure == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
