"""The `haystack` fixture's factory: token-exact prompts (a needle or any task family) for one tokenizer and cell."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..marker import LongctxCell
from ..tasks.haystack import Haystack, MultiHaystack, Needle, build_haystack, build_multi_haystack, make_needles

if TYPE_CHECKING:
    from ..tasks import Arrange, TaskPrompt

Filler = str | Path | Iterable[str]


class HaystackFactory:
    """Builds haystacks with `tokenizer`; a `cell` (from `@pytest.mark.longctx`) supplies length, depth and seed.

    Results are cached per arguments (when the filler is a string, a path or a tuple), so repeated cells and
    variants of one prompt do not rebuild it.
    """

    def __init__(self, tokenizer: Any, *, cell: LongctxCell | None = None) -> None:
        self.tokenizer = tokenizer
        self.cell = cell
        self._cache: dict[tuple[Any, ...], Haystack | MultiHaystack | TaskPrompt] = {}

    def __call__(
        self,
        length: int | None = None,
        depth: float | None = None,
        *,
        needle: Needle | str | None = None,
        question: str | None = None,
        answer: str | None = None,
        needles: Sequence[Needle] | int | None = None,
        depths: Sequence[float] | None = None,
        seed: int | None = None,
        filler: Filler | None = None,
        instructions: str | None = None,
        family: str | None = None,
        arrange: Arrange | None = None,
        **options: Any,
    ) -> Haystack | MultiHaystack | TaskPrompt:
        """A prompt of exactly `length` tokens (after the chat template) hiding a needle at `depth`.

        Args:
            length, depth, seed: default to the marked test's cell; else `length` is required, depth 0.5, seed 0.
            needle: a `Needle`, or its text as a string together with `question=` and `answer=`;
                a seeded vault-code needle if None.
            needles: several needles (a list, or a count of seeded ones), placed at `depths` (evenly spread
                from 0.0 to 1.0 if not given); returns a `MultiHaystack` asking `question` (default: each needle's).
            filler: the haystack's text: a string (a document, split into lines), a path to a text file, or an
                iterable of lines; the seeded shipping log if None. It must hold enough text for `length`.
            instructions: the line before the haystack.
            family, options: a task family of `pytest_longctx.tasks` (e.g. "niah_multikey") and its options
                (e.g. `distractors=5`), instead of a needle; the family builds its own needles and filler.
            arrange: with family="multi_doc_qa", reorders the documents before rendering (edge packing, say).

        Returns:
            A `Haystack` (`prompt_text`, `token_ids`, `needle_span`, `answer`); with `needles=`, a `MultiHaystack`;
            with `family=`, a `TaskPrompt` (`answers`, `evidence_spans`, `score()`).
        """
        cell = self.cell
        if length is None:
            if cell is None:
                raise TypeError("haystack() needs length= (or mark the test with @pytest.mark.longctx(lengths=[...]))")
            length = cell.length
        seed = seed if seed is not None else (cell.seed if cell is not None else 0)
        if family is not None:
            needle_arguments = dict(needle=needle, question=question, answer=answer, needles=needles, depths=depths,
                                    filler=filler, instructions=instructions)
            given = sorted(name for name, value in needle_arguments.items() if value is not None)
            if given:
                raise TypeError(f"family= builds its own needles and filler; drop {', '.join(given)}")
            depth = depth if depth is not None else (cell.depth if cell is not None else 0.5)
            return self._task(length, depth, seed, family, arrange, options)
        if options or arrange is not None:
            unexpected = sorted(options) + (["arrange"] if arrange is not None else [])
            raise TypeError(f"unexpected arguments {', '.join(unexpected)} (task options go with family=)")
        lines = _filler_lines(filler)
        key = (length, depth, needle, question, answer, needles if not isinstance(needles, list) else tuple(needles),
               tuple(depths) if depths is not None else None, seed, lines, instructions)
        cacheable = lines is None or isinstance(lines, tuple)
        if cacheable and key in self._cache:
            return self._cache[key]
        if needles is not None:
            if needle is not None or answer is not None:
                raise TypeError("give either needle= or needles=, not both")
            built: Haystack | MultiHaystack = self._multi(length, needles, depths, seed, lines, instructions, question)
        else:
            if depths is not None:
                raise TypeError("depths= goes with needles=; for one needle use depth=")
            depth = depth if depth is not None else (cell.depth if cell is not None else 0.5)
            built = build_haystack(
                self.tokenizer, length=length, depth=depth, seed=seed, needle=_needle(needle, question, answer),
                filler=lines, instructions=instructions,
            )
        if cacheable:
            self._cache[key] = built
        return built

    def _task(
        self, length: int, depth: float, seed: int, family: str, arrange: Arrange | None, options: dict[str, Any]
    ) -> TaskPrompt:
        from ..tasks import build_task, parse_task

        spec = parse_task({"family": family, **options})
        key = ("task", spec, length, depth, seed, arrange)
        if key not in self._cache:
            self._cache[key] = build_task(self.tokenizer, spec, length=length, depth=depth, seed=seed, arrange=arrange)
        return self._cache[key]  # type: ignore[return-value]

    def _multi(
        self, length: int, needles: Sequence[Needle] | int, depths: Sequence[float] | None, seed: int,
        lines: Iterable[str] | None, instructions: str | None, question: str | None,
    ) -> MultiHaystack:
        chosen = make_needles(needles, seed) if isinstance(needles, int) else tuple(needles)
        if depths is None:
            count = len(chosen)
            depths = [i / (count - 1) for i in range(count)] if count > 1 else [0.5]
        return build_multi_haystack(
            self.tokenizer, length=length, needles=chosen, depths=depths, seed=seed, filler=lines,
            instructions=instructions, question=question,
        )


def _needle(needle: Needle | str | None, question: str | None, answer: str | None) -> Needle | None:
    if isinstance(needle, Needle):
        if question is not None or answer is not None:
            raise TypeError("question= and answer= go with a needle given as text, not with a Needle")
        return needle
    if needle is None:
        if question is not None or answer is not None:
            raise TypeError("question= and answer= need needle= (the sentence to hide)")
        return None
    if question is None or answer is None:
        raise TypeError("a needle given as text needs question= and answer= (the string a correct reply contains)")
    return Needle(text=needle, question=question, answer=answer)


def _filler_lines(filler: Filler | None) -> tuple[str, ...] | Iterable[str] | None:
    if filler is None:
        return None
    if isinstance(filler, Path):
        filler = filler.read_text(encoding="utf-8")
    if isinstance(filler, str):
        return tuple(filler.splitlines())
    if isinstance(filler, (list, tuple)):
        return tuple(filler)
    return filler
