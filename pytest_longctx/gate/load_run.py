"""One level of the load sweep for one side of a GateRun: its prompts, the engine driven, the level recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .load import LoadLevel, RequestOutcome, summarise

if TYPE_CHECKING:
    from .load import LoadSpec
    from .spec import GateSpec, VariantSpec

Prompts = dict[tuple[str, int], list[list[int]]]  # per side and tokenizer: the load prompts, built once

LOAD_DEPTH = 0.5  # where the needle sits in a load prompt: it is not scored, only makes the prompt a gate cell's twin


def load_prompts(tokenizer: Any, gate: GateSpec, variant: VariantSpec) -> list[list[int]]:
    """`requests` prompts of `length` tokens built like the gate's haystack cells (its first positioned task), one
    seed each, so their filler differs from the first line on: no two share a prefix beyond the prompt template,
    and no engine's prefix cache can serve one from another."""
    from ..tasks import uses_depth
    from .sweep import Cell, build_prompt

    spec = gate.sweep.load
    assert spec is not None
    task = next(t for t in gate.sweep.tasks if uses_depth(t))
    return [list(build_prompt(tokenizer, task, Cell(task.name, spec.length, LOAD_DEPTH, seed), variant).token_ids)
            for seed in range(spec.requests)]


def measure_level(gate: GateSpec, backend: Callable[[], Any], variant: VariantSpec, concurrency: int, *, prompts: Prompts,
                  started: float) -> LoadLevel:
    """Drive `variant`'s launched engine (`backend()`: its ServedBackend) with the load sweep's requests at `concurrency`;
    failures are recorded in the level (as errored requests), never raised. `started` is when the load sweep began (its
    time budget's start); `prompts` keeps each side's prompts from one level to the next."""
    spec = gate.sweep.load
    assert spec is not None
    try:
        outcomes, wall = _drive(gate, backend(), variant, concurrency, spec, prompts, deadline=started + spec.time_budget_s)
    except Exception as exc:  # noqa: BLE001 - a level that could not run at all: every request errored
        outcomes, wall = [RequestOutcome(None, None, 0, f"{type(exc).__name__}: {exc}")] * spec.requests, 0.0
    return summarise(variant.name, concurrency, outcomes, wall, spec.slo)


def _drive(gate: GateSpec, backend: Any, variant: VariantSpec, concurrency: int, spec: LoadSpec, prompts: Prompts, *,
           deadline: float) -> tuple[list[RequestOutcome], float]:
    from ..backends.served.load import prompt_form, require_loopback, run_level

    url = backend.base_urls[0]
    require_loopback(url)  # before anything is sent, the untimed probe included
    key = (variant.name, id(backend.tokenizer))
    if key not in prompts:
        prompts[key] = load_prompts(backend.tokenizer, gate, variant)
    ids = prompts[key]

    def decode(ids: list[int]) -> str:
        return str(backend.tokenizer.decode(ids, skip_special_tokens=False))

    left = deadline - time.perf_counter()
    # Past the budget nothing is sent, the probe neither; run_level records every request as not sent.
    form = "ids" if left <= 0 else prompt_form(url, ids[0][:8], decode, timeout_s=min(spec.request_timeout_s, left),
                                               model=backend.model)
    return run_level(url, ids, concurrency=concurrency, max_new_tokens=spec.max_new_tokens, request_timeout_s=spec.request_timeout_s,
                     deadline=deadline, form=form, decode=decode, model=backend.model)
