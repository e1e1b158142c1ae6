"""Writes families-results.json: a made-up but schema-exact run of a multi-family gate, for the report tests.

The gate is parsed by `parse_gate`, the metrics and decision come from `decision.evaluate`, and the file is
written by `save_results`, so it holds exactly what a real run would record. The cells themselves are
invented (no model runs): several task families, two of them position-free, misses of every kind, three
timed runs per cell, recall runs that reused a cached prefix, and a loss curve per side.

Run `python tests/data/regenerate.py families` from the repository root (PYTHONPATH=.) to regenerate the file.
"""

from __future__ import annotations

import random
from pathlib import Path

from pytest_longctx.gate.decision import evaluate
from pytest_longctx.gate.results import CellResult, GateResults, save_results
from pytest_longctx.gate.spec import parse_gate
from pytest_longctx.gate.sweep import plan_cells

TARGET = Path(__file__).with_name("families-results.json")

GATE = {
    "name": "yarn-families",
    "model": "embedded:smollm2-135m-instruct",
    "baseline": {},
    "candidate": {
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
        "max_position_embeddings": 32768,
        "kv_cache_dtype": "fp8_e4m3",
        "packing": "edge",
    },
    "sweep": {
        "tasks": [
            "niah",
            {"family": "niah_single", "value": "uuid"},
            {"family": "niah_multikey", "distractors": 3},
            "variable_tracking",
            "common_words",
            "multi_doc_qa",
        ],
        "lengths": [1024, 2048, 4096],
        "depths": [0.0, 0.5, 1.0],
        "seeds": [0, 1],
        "repeats": 3,
        "loss": {"tokens": 8192, "buckets": 8},
    },
    "thresholds": {
        "middle_recall": {"min_delta": 0.0},
        "effective_length_ratio": {"min": 1.0},
        "loss_ratio": {"max": 1.05},
        "p95_latency_ratio": {"max": 1.10},
        "memory_ratio": {"max": 1.05},
    },
}

# (task, length, depth, seed) -> the candidate's miss: (failure, answer, score); the baseline misses fewer.
UUID = "0b6f1e8a-3c2d-4e5f-9a7b-1c2d3e4f5a6b"
EXPECTED = {
    "niah": "4821",
    "niah_single(value=uuid)": UUID,
    "niah_multikey": "7730914",
    "variable_tracking": "VAR_QKT, VAR_ZBW, VAR_HNE, VAR_MOP",
    "common_words": "apple, river, stone, cloud, lamp, field, glass, paper, crown, bread",
    "multi_doc_qa": "Lisbon",
}
CANDIDATE_MISSES = {
    ("niah", 4096, 1.0, 1): ("missing", "I could not find a vault code in the log.", 0.0),
    ("niah_single(value=uuid)", 4096, 0.5, 0): ("truncated", "The special magic uuid is 0b6f1e8a-3c2d-4e5f", 0.0),
    ("niah_single(value=uuid)", 4096, 1.0, 0): ("wrong_value", "The special magic uuid is 9d1c0a77-2b3e-4f10-8c9d-aa01b2c3d4e5.", 0.0),
    ("niah_multikey", 2048, 0.5, 1): ("wrong_value", "The value for the key is 5512088.", 0.0),
    ("niah_multikey", 4096, 0.0, 0): ("wrong_value", "The value for the key is 5512088.", 0.0),
    ("niah_multikey", 4096, 0.5, 0): ("wrong_value", "The value for the key is 1049337.", 0.0),
    ("variable_tracking", 4096, 0.5, 0): ("partial", "VAR_QKT, VAR_ZBW", 0.5),
    ("variable_tracking", 4096, 0.5, 1): ("partial", "VAR_QKT, VAR_ZBW, VAR_HNE", 0.75),
    ("common_words", 2048, 0.5, 1): ("partial", "apple, river, stone, cloud, lamp, field", 0.6),
    ("common_words", 4096, 0.5, 0): ("partial", "apple, river, stone, cloud", 0.4),
    ("common_words", 4096, 0.5, 1): ("refusal/other", "I'm sorry, I can't count words in such a long list.", 0.0),
    ("multi_doc_qa", 4096, 0.5, 1): ("missing", "The documents do not say.", 0.0),
}
BASELINE_MISSES = {
    ("common_words", 4096, 0.5, 1): ("partial", "apple, river, stone, cloud, lamp, field, glass, paper", 0.8),
    ("niah_multikey", 4096, 0.5, 0): ("wrong_value", "The value for the key is 1049337.", 0.0),
}
REUSED = {("niah", 2048, 0.5, 1): 1391, ("niah", 4096, 1.0, 1): 3420}  # recall runs that reused a cached prefix


def _cell(variant: str, task: str, length: int, depth: float, seed: int, rng: random.Random) -> CellResult:
    misses = CANDIDATE_MISSES if variant == "candidate" else BASELINE_MISSES
    key = (task, length, depth, seed)
    expected = EXPECTED[task]
    failure, answer, score = misses.get(key, (None, f"The answer is {expected}.", 1.0))
    slower = 1.04 if variant == "candidate" else 1.0
    prefill = tuple(round(0.06 * length / 1024 * slower * rng.uniform(1.0, 1.12), 4) for _ in range(3))
    decode = tuple(round(0.0121 * slower * rng.uniform(1.0, 1.08), 5) for _ in range(3))
    total = tuple(round(p + 16 * d, 4) for p, d in zip(prefill, decode, strict=True))
    needle = None if task in ("variable_tracking", "common_words") else int(depth * (length - 60)) + 12
    excerpt = f"… the shipment left the dock. The vault code is {expected}. The next line of the log reads …" if task == "niah" else ""
    return CellResult(
        variant=variant, task=task, length=length, tokens=length - 2, depth=depth, seed=seed,
        found=failure is None, answer=answer, expected=expected,
        prefill_s=min(prefill), decode_s_per_token=min(decode), total_s=min(total), new_tokens=16,
        kv_bytes=length * 30 * 3 * 64 * 2 * (1 if variant == "candidate" else 2),
        kv_bytes_analytic=length * 30 * 3 * 64 * 2 * (1 if variant == "candidate" else 2),
        kv_tokens=length, peak_bytes=None, prompt_sha256=f"{rng.getrandbits(256):064x}", needle_start=needle,
        failure=failure, excerpt=excerpt, repeats=3, score=score,
        prefill_samples=prefill, decode_samples=decode, total_samples=total, reused_tokens=REUSED.get(key, 0),
    )


def _loss_curve(losses: list[float]) -> dict[str, object]:
    edges = [i * 1024 for i in range(9)]
    counts = [1023] + [1024] * 7  # the first token has no prediction
    return {"edges": edges, "losses": losses, "counts": counts, "tokens": 8192}


def build() -> GateResults:
    gate = parse_gate(GATE, source="gates/yarn-families.yaml")
    rng = random.Random(0)
    cells = [
        _cell(variant.name, c.task, c.length, c.depth, c.seed, rng)
        for c in plan_cells(gate.sweep) for variant in gate.variants
    ]
    curves = {
        "baseline": _loss_curve([3.412, 2.981, 2.803, 2.744, 2.702, 2.689, 2.671, 2.660]),
        "candidate": _loss_curve([3.431, 3.002, 2.820, 2.770, 2.745, 2.790, 2.877, 2.986]),
    }
    metrics, decision = evaluate(gate, cells, loss_curves=curves)
    environment = {"python": "3.12.3", "libraries": {"torch": "2.6.0", "transformers": "5.2.0"}, "device": "cpu"}
    return GateResults(gate=gate.to_dict(), decision=decision, metrics=metrics, cells=tuple(cells),
                       environment=environment, wall_s=412.5)


if __name__ == "__main__":
    save_results(build(), TARGET)
    print(f"wrote {TARGET}")
