"""What a gate needs from a model backend: a tokenizer, a KV shape, and timed greedy generation of one prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..capacity.kv_math import KvShape
    from ..gate.spec import VariantSpec

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
    # Sum over the expected values of log p(value | prompt), teacher-forced on the cache this run used; None when
    # no values were given or the backend cannot measure it.
    answer_logprob: float | None = None


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


class CellTimeout(TimeoutError):
    """A generation that ran past the gate's `cell_timeout_s`."""


def decode_seconds(per_token: Sequence[float]) -> float | None:
    """Decode seconds per output token: the median inter-token latency (as vLLM's benchmarks report it).

    The median, not the mean, so a run is not judged by the one step the OS preempted: on a shared runner
    one stalled step in a short answer moves the mean by more than a 10 % threshold. A slower kernel or a
    bigger cache to read slows every step, and moves the median as much as the mean.
    """
    import statistics

    return statistics.median(per_token) if per_token else None
