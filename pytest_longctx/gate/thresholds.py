"""The gate's `thresholds:` section: the approval rule's values and policies, parsed and validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .reader import Reader as _Reader

MemorySource = Literal["auto", "kv_bytes", "peak_bytes"]
RecallPolicy = Literal["strict", "noninferiority"]
LatencyPolicy = Literal["point", "bound"]


@dataclass(frozen=True)
class Thresholds:
    middle_recall_min_delta: float = 0.0
    p95_latency_ratio_max: float = 1.10
    memory_ratio_max: float = 1.05
    memory_source: MemorySource = "auto"
    middle_recall_policy: RecallPolicy = "strict"
    middle_recall_margin: float = 0.0
    middle_recall_alpha: float = 0.05
    p95_latency_policy: LatencyPolicy = "point"
    p95_prefill_ratio_max: float | None = None
    p95_prefill_policy: LatencyPolicy = "point"
    p95_decode_ratio_max: float | None = None
    p95_decode_policy: LatencyPolicy = "point"
    latency_confidence: float = 0.95
    effective_length_ratio_min: float | None = None
    effective_length_recall: float = 0.85  # the recall a length must hold to count as effective
    loss_ratio_max: float | None = None  # worst position bucket's candidate/baseline mean next-token loss
    answer_logprob_max_drop: float | None = None  # nats of mean answer log-probability the candidate may lose
    answer_logprob_policy: LatencyPolicy = "point"
    goodput_ratio_min: float | None = None  # load sweep: candidate/baseline goodput at its worst level (gate/load_decision.py)
    throughput_ratio_min: float | None = None  # ... and output-token throughput


def parse_thresholds(r: _Reader, raw: Any) -> Thresholds:
    keys = {"middle_recall": "", "p95_latency_ratio": "", "p95_prefill_ratio": "", "p95_decode_ratio": "", "memory_ratio": "",
            "effective_length_ratio": "", "loss_ratio": "", "answer_logprob": "",
            "goodput_ratio": "", "throughput_ratio": ""}
    t = r.mapping(raw if raw is not None else {}, "thresholds", keys)
    mr = r.mapping(t.get("middle_recall", {}), "thresholds.middle_recall", {"min_delta": "", "policy": "", "margin": "", "alpha": ""})
    mem = r.mapping(t.get("memory_ratio", {}), "thresholds.memory_ratio", {"max": "", "source": ""})
    eff = r.mapping(t.get("effective_length_ratio", {}), "thresholds.effective_length_ratio", {"min": "", "recall": ""})
    loss = r.mapping(t.get("loss_ratio", {}), "thresholds.loss_ratio", {"max": ""})
    logprob = r.mapping(t.get("answer_logprob", {}), "thresholds.answer_logprob", {"max_drop": "", "policy": ""})
    load = {name: r.mapping(t.get(name, {}), f"thresholds.{name}", {"min": ""}) for name in ("goodput_ratio", "throughput_ratio")}
    if logprob and "max_drop" not in logprob:
        raise r.fail("thresholds.answer_logprob.max_drop", "is missing",
                     "add max_drop: 0.5 (the nats of answer log-probability you accept losing)")
    latency: dict[str, tuple[float | None, str, float]] = {}
    for name, default in (("p95_latency_ratio", 1.10), ("p95_prefill_ratio", None), ("p95_decode_ratio", None)):
        key = f"thresholds.{name}"
        # One confidence level serves every latency interval; it is set on the end-to-end threshold.
        allowed = {"max": "", "policy": "", "confidence": ""} if name == "p95_latency_ratio" else {"max": "", "policy": ""}
        lat = r.mapping(t.get(name, {}), key, allowed)
        bound = lat.get("max", default)
        latency[name] = (
            None if bound is None else r.number(bound, f"{key}.max", low=0.0),
            r.choice(lat.get("policy", "point"), f"{key}.policy", get_args(LatencyPolicy)),
            r.number(lat.get("confidence", 0.95), f"{key}.confidence", low=0.5, high=0.999),
        )
    policy = r.choice(mr.get("policy", "strict"), "thresholds.middle_recall.policy", get_args(RecallPolicy))
    if policy == "noninferiority" and "margin" not in mr:
        raise r.fail("thresholds.middle_recall.margin", "is required by policy noninferiority",
                     "add margin: 0.05 (the recall loss you accept)")
    return Thresholds(
        middle_recall_min_delta=r.number(mr.get("min_delta", 0.0), "thresholds.middle_recall.min_delta", low=-1.0, high=1.0),
        p95_latency_ratio_max=latency["p95_latency_ratio"][0],  # type: ignore[arg-type]
        memory_ratio_max=r.number(mem.get("max", 1.05), "thresholds.memory_ratio.max", low=0.0),
        memory_source=r.choice(mem.get("source", "auto"), "thresholds.memory_ratio.source", get_args(MemorySource)),  # type: ignore[arg-type]
        middle_recall_policy=policy,  # type: ignore[arg-type]
        middle_recall_margin=r.number(mr.get("margin", 0.0), "thresholds.middle_recall.margin", low=0.0, high=1.0),
        middle_recall_alpha=r.number(mr.get("alpha", 0.05), "thresholds.middle_recall.alpha", low=0.001, high=0.5),
        p95_latency_policy=latency["p95_latency_ratio"][1],  # type: ignore[arg-type]
        p95_prefill_ratio_max=latency["p95_prefill_ratio"][0],
        p95_prefill_policy=latency["p95_prefill_ratio"][1],  # type: ignore[arg-type]
        p95_decode_ratio_max=latency["p95_decode_ratio"][0],
        p95_decode_policy=latency["p95_decode_ratio"][1],  # type: ignore[arg-type]
        latency_confidence=latency["p95_latency_ratio"][2],
        effective_length_ratio_min=None if eff.get("min") is None else r.number(
            eff["min"], "thresholds.effective_length_ratio.min", low=0.0),
        effective_length_recall=r.number(eff.get("recall", 0.85), "thresholds.effective_length_ratio.recall", low=0.0, high=1.0),
        loss_ratio_max=None if loss.get("max") is None else r.number(loss["max"], "thresholds.loss_ratio.max", low=0.0),
        answer_logprob_max_drop=None if "max_drop" not in logprob else r.number(
            logprob["max_drop"], "thresholds.answer_logprob.max_drop", low=0.0),
        answer_logprob_policy=r.choice(logprob.get("policy", "point"), "thresholds.answer_logprob.policy", get_args(LatencyPolicy)),  # type: ignore[arg-type]
        goodput_ratio_min=None if load["goodput_ratio"].get("min") is None else r.number(
            load["goodput_ratio"]["min"], "thresholds.goodput_ratio.min", low=0.0),
        throughput_ratio_min=None if load["throughput_ratio"].get("min") is None else r.number(
            load["throughput_ratio"]["min"], "thresholds.throughput_ratio.min", low=0.0),
    )
