"""The Change protocol: what one kind of long-context change owns, and the plans the backends build from changes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .errors import ChangeError, one_of
from .model import ModelSpec

__all__ = ["CachePlan", "Change", "ChangeError", "LoadChoice", "LoadPlan", "PromptPlan", "Reuse", "Stage"]

Stage = Literal["load", "cache", "forward", "prompt", "serve", "planted"]
# Whether a prompt's K/V under this change depend on the prompt's tokens alone, so that a prefix cached by one prompt
# can start another: "any" (yes), "exact" (only an identical prompt), "never" (they depend on more, e.g. its length).
Reuse = Literal["any", "exact", "never"]


@dataclass(frozen=True)
class LoadPlan:
    """What a side loads: the model, and the settings applied to its config before the weights load."""

    model: ModelSpec
    rope: Any = None  # rope.RopeSettings
    attn_implementation: str | None = None


CacheFactory = Callable[[Any], Any]  # model config -> a fresh transformers Cache for one sequence


@dataclass(frozen=True)
class CachePlan:
    """The KV cache a side decodes with, as the changes shape it; `backends.kv_cache.build_cache` builds it."""

    kv_cache_dtype: str = "auto"
    kv_scale: str = "token_head"
    window: Any = None  # window.AttentionWindow: a sliding window with sinks
    factory: CacheFactory | None = None  # a user change's own cache; it then owns eviction and quantization
    factory_owner: str | None = None  # the change that set `factory`, named in errors

    @property
    def quantized(self) -> bool:
        return self.kv_cache_dtype != "auto"


@dataclass(frozen=True)
class PromptPlan:
    """How a side lays out a task's prompt: document order and the chat-history budget (see tasks.build_task)."""

    arrange: Any = None  # Arrange
    history: Any = None  # prompt_layout.HistoryBudget


class Change:
    """One kind of long-context change, applied to one side of a gate.

    A subclass is a frozen dataclass of its validated settings. It declares the gate keys it owns on a side and
    overrides the hooks where it acts; the defaults leave everything as it is, so a change overrides only what it
    changes. The backends and the sweep ask a side's changes, in order, for their contributions and never branch
    on which kinds a side has.

    Class attributes:
        kind: the registry name (`pytest_longctx_register_changes`, results JSON).
        order: where it composes: a model swap (10) before the dtype it loads in (20), the KV dtype (50) before the
            window that stores in it (60); registered kinds default to 100, planted regressions come last (200).
        keys: the side's gate keys this change reads (`parse` gets the side mapping restricted to them).
        stage: where it acts, for the docs and the report.
        computation: True when it should change what the model computes on the same prompt; a side that differs
            from the baseline by such a change and computes exactly the same is caught by the no-op guard.
        reuse: whether a prompt's K/V under this change depend on its tokens alone (see `Reuse`).
        drafts: whether greedy drafts verified in one pass give the same answers as one token at a time.
        batch: whether prompts of one length can run as one batch with each row's answer exact (not for a window,
            a RoPE that depends on the length, or a cache that evicts per sequence).
        changes_tokens: True when the side's prompts differ from the baseline's in their token ids by design (a
            prompt layout, another model's tokenizer): the sides then pair on a cell's content, not its ids.
        in_process_only: True when a served engine cannot take it from us (it goes in the launch command).
    """

    kind: ClassVar[str] = ""
    order: ClassVar[int] = 100  # where its contributions compose among the others (lower first)
    keys: ClassVar[tuple[str, ...]] = ()
    stage: ClassVar[Stage] = "forward"
    computation: ClassVar[bool] = True
    reuse: ClassVar[Reuse] = "any"
    drafts: ClassVar[bool] = True
    batch: ClassVar[bool] = True
    changes_tokens: ClassVar[bool] = False
    in_process_only: ClassVar[bool] = True

    def __init_subclass__(cls, **declared: Any) -> None:
        """The class attributes above may be given in the class statement: `class Precision(Change, kind="precision",
        keys=("dtype",), stage="load")`; an unknown one is a TypeError."""
        known = ("kind", "order", "keys", "stage", "computation", "reuse", "drafts", "batch", "changes_tokens", "in_process_only")
        for name, value in declared.items():
            if name not in known:
                raise TypeError(f"{cls.__name__}: unknown Change attribute {name!r}; use one of: {', '.join(known)}")
            setattr(cls, name, value)
        super().__init_subclass__()

    # ---- settings
    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> Change | None:
        """This change from the side's gate keys (only `keys` are present), None when the side does not use it.

        Raises ChangeError naming the key, the problem and the fix."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """The settings as JSON values, under the side's gate keys (`parse(record())` gives the change back)."""
        raise NotImplementedError

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Change | None:
        """The change from a results file's side record; the default parses the recorded keys again."""
        own = {k: record[k] for k in cls.keys if k in record and record[k] is not None}
        return cls.parse(own) if own else None

    def describe(self) -> tuple[tuple[str, str], ...]:
        """(setting, text) rows for the report and summaries, e.g. ("attention", "window 512 + 4 sinks")."""
        return tuple((key, str(value)) for key, value in self.record().items())

    def changes_computation(self) -> bool:
        """Whether these settings should change what the model computes on the same prompt (the no-op guard)."""
        return self.computation

    def changes_kv(self) -> bool:
        """Whether a prompt's K/V under this change may differ from those without it (keys prefix reuse apart)."""
        return True

    def refuse_noop(self, *, longest_prompt: int, longest_run: int, trained: int | None) -> None:
        """Raise ChangeError when, on this sweep (its longest prompt, its longest run with the answer) and a model
        trained to `trained` positions (None: unknown), this change would compute what the model does without it."""

    def check(self, side: Any, sweep: Any) -> None:
        """Refuse settings that are each valid but cannot go with this sweep (a gate.spec.SweepSpec) or the side's
        other changes (`side`: the gate.spec.VariantSpec)."""

    # ---- load time
    def load(self, plan: LoadPlan) -> LoadPlan:
        return plan

    # ---- cache and forward
    def cache(self, plan: CachePlan) -> CachePlan:
        return plan

    def before_prompt(self, model: Any) -> None:
        """Called before each prompt, e.g. to reset state the model keeps across prompts."""

    def after_prefill(self, cache: Any) -> None:
        """Called after the prompt's prefill, before the first decode step (eviction, compression)."""

    def kv_tokens(self, prompt: int, new: int) -> int | None:
        """Tokens whose K/V this change leaves held after a `prompt` and `new` generated tokens (the analytic count);
        None when it holds every one."""
        return None

    def decode_delay(self) -> float:
        """Extra wall time per decode step, as a fraction of the step's own time (planted regressions)."""
        return 0.0

    def kv_copies(self) -> int:
        """Copies of the KV cache held while it is measured (planted regressions)."""
        return 1

    # ---- prompt
    def prompt(self, plan: PromptPlan, family: Any) -> PromptPlan:
        """How this change lays out a prompt of task `family` (a tasks.family.Family)."""
        return plan

    def transform(self, tokenizer: Any, prompt: Any) -> Any:
        """A prompt built in full (a tasks.TaskPrompt), as this side sends it (retrieval); None leaves it as built."""
        return None

    # ---- served
    def served(self) -> Any:
        """The served-engine settings (served.ServedEngine) when this change puts the side on an engine."""
        return None


@dataclass(frozen=True)
class LoadChoice(Change, stage="load"):
    """A change that is one gate key (`keys[0]`) naming one of `choices`, a setting the model loads with; the
    subclass's `load` says where the name goes (`dtype: bfloat16`, `attn_implementation: eager`)."""

    choices: ClassVar[tuple[str, ...]] = ()

    value: str

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> LoadChoice | None:
        key = cls.keys[0]
        value = side.get(key)
        return None if value is None else cls(one_of(value, key, cls.choices))

    def record(self) -> dict[str, Any]:
        return {self.keys[0]: self.value}
