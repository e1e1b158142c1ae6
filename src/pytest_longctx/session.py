"""One gate run, independent of pytest: lazy model, shared prompts, recorded cells, the decision and its outputs."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gate_spec import GateSpec, VariantSpec
from .results import CellResult, GateResults, TimingSample, save_results
from .sweep import Cell, build_prompt, errored_cell, interleaved, merge_samples, run_cell, timed_run

if TYPE_CHECKING:
    from .backend import Backend


class CellError(RuntimeError):
    """A cell that could not be measured; its item fails and the gate cannot approve."""


def _default_backend(gate: GateSpec) -> Backend:
    from .backend import TransformersBackend

    return TransformersBackend.load(gate.model)


class GateRun:
    """Measures the cells of one gate (in any order, any subset) and turns what was recorded into results."""

    def __init__(
        self, gate: GateSpec, *, backend_factory: Callable[[GateSpec], Backend] = _default_backend, capture: bool = False
    ) -> None:
        self.gate = gate
        self.capture = capture
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self._load_error: BaseException | None = None
        self._prompts: dict[Cell, Any] = {}
        self._fingerprint: dict[str, str] | None = None
        self.cells: list[CellResult] = []
        self.samples: list[TimingSample] = []
        # What this process has timed so far, so a timing pass only runs the samples still owed.
        self._timed: dict[tuple[str, Cell], int] = {}
        self._failed: set[tuple[str, Cell]] = set()
        self._started = time.perf_counter()

    @property
    def variants(self) -> tuple[VariantSpec, ...]:
        """The sides this run measures: the baseline alone when capturing, the candidate alone against a capture."""
        if self.capture:
            return (self.gate.baseline,)
        if self.gate.captured_baseline is not None:
            return (self.gate.candidate,)
        return self.gate.variants

    def backend(self) -> Backend:
        """Load the model once (a failed load is remembered, not retried per cell) and warm it up untimed."""
        if self._load_error is not None:
            raise CellError(f"model {self.gate.model.ref} failed to load: {self._load_error}")
        if self._backend is None:
            try:
                backend = self._backend_factory(self.gate)
                warm = backend.tokenizer.encode("Warm-up: the first forward pass pays one-off costs.") if hasattr(backend.tokenizer, "encode") else [1, 2, 3]
                for variant in self.variants:
                    backend.generate(warm, variant=variant, max_new_tokens=2)
            except Exception as exc:
                self._load_error = exc
                raise
            self._backend = backend
        return self._backend

    def prompt(self, cell: Cell) -> Any:
        """Both variants get the very same token ids for a cell; build them once."""
        if cell not in self._prompts:
            self._prompts[cell] = build_prompt(self.backend(), cell)
        return self._prompts[cell]

    def measure(self, variant: VariantSpec, cell: Cell) -> CellResult:
        """The recall run of one cell; on failure return an errored record (the caller reports it and fails the item)."""
        prompt = None
        try:
            prompt = self.prompt(cell)
            sweep = self.gate.sweep
            result = run_cell(
                self.backend(), variant, cell, prompt, max_new_tokens=sweep.max_new_tokens, timeout_s=sweep.cell_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - any failure of a cell (OOM and timeouts too) is recorded
            _release_device_memory()
            self._failed.add((variant.name, cell))
            return errored_cell(variant, cell, f"{type(exc).__name__}: {exc}", prompt)
        self._timed[(variant.name, cell)] = len(result.total_samples)
        return result

    @property
    def timing_passes(self) -> int:
        return self.gate.sweep.repeats

    def timing_pass(self, number: int) -> list[TimingSample]:
        """Timing pass `number` (1-based): one full, uncached run of every cell still owed its `number`-th sample.

        Passes sweep the whole gate in ABBA order, flipping which side leads from one pass to the next, so a
        cell's repeats are minutes apart and a burst of load on a shared runner cannot hit all of them.
        """
        sweep = self.gate.sweep
        samples = []
        for variant, cell in interleaved(self.gate, self.variants, flip=number % 2 == 0):
            key = (variant.name, cell)
            if key in self._failed or self._timed.get(key, 0) >= number:
                continue
            try:
                prompt = self.prompt(cell)
            except Exception as exc:  # noqa: BLE001 - recorded against the cell
                self._failed.add(key)
                samples.append(TimingSample(variant.name, cell.task, cell.length, cell.depth, cell.seed, None, None, None, "",
                                            f"{type(exc).__name__}: {exc}"))
                continue
            sample = timed_run(self.backend(), variant, cell, prompt, max_new_tokens=sweep.max_new_tokens, timeout_s=sweep.cell_timeout_s)
            if sample.error is not None:
                _release_device_memory()
                self._failed.add(key)
            self._timed[key] = self._timed.get(key, 0) + 1
            samples.append(sample)
        return samples

    def record(self, cell: CellResult) -> None:
        self.cells.append(cell)

    def record_samples(self, samples: list[TimingSample]) -> None:
        self.samples.extend(samples)

    def merged_cells(self) -> list[CellResult]:
        """Recorded recall cells with every timing pass's samples folded in."""
        sweep = self.gate.sweep
        return [merge_samples(c, self.samples, repeats=sweep.repeats, statistic=sweep.repeat_statistic) for c in self.cells]

    def fingerprint(self) -> dict[str, str]:
        """The loaded model's fingerprint, computed once (it hashes the tokenizer's whole vocabulary)."""
        if self._fingerprint is None:
            from .baseline_capture import fingerprint

            self._fingerprint = fingerprint(self.backend())
        return self._fingerprint

    def captured(self) -> Any:
        """This run's baseline side as a captured baseline (complete runs only; the caller writes it)."""
        from .baseline_capture import build_capture, require_complete

        # Completeness first: a failed model load or a `-k` subset must not load the model just to fingerprint it.
        cells = self.merged_cells()
        require_complete(self.gate, cells)
        return build_capture(self.gate, cells, self.fingerprint())

    def results(self) -> GateResults:
        from .decision import evaluate

        cells, problems = self.merged_cells(), []
        if self.gate.captured_baseline is not None:
            from .baseline_capture import CaptureError, load_capture, mismatches

            try:
                capture = load_capture(self.gate.captured_baseline)
                cells += [c for c in capture.cells if c.variant == self.gate.baseline.name]
                current = {} if self._load_error is not None else self.fingerprint()
                problems = mismatches(capture, self.gate, current)
            except (CaptureError, CellError) as exc:
                problems = [str(exc)]
        metrics, decision = evaluate(self.gate, cells, fingerprint_mismatches=problems)
        return GateResults(
            gate=self.gate.to_dict(),
            decision=decision,
            metrics=metrics,
            cells=tuple(sorted(cells, key=lambda c: (c.task, c.length, c.depth, c.seed, c.variant))),
            environment=self.environment(),
            wall_s=time.perf_counter() - self._started,
        )

    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "model": self.gate.model.ref,
            "gate_sha256": self.gate.sha256,
            "git_commit": _git_commit(),
        }
        try:
            import torch
            import transformers

            env.update(torch=torch.__version__, transformers=transformers.__version__)
            env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
        except ImportError:
            pass
        env["libraries"] = _library_versions()
        if self._backend is not None:
            fp = self.fingerprint()
            env.update(model_fingerprint=fp["model_weights"], tokenizer_sha256=fp["tokenizer"], chat_template_sha256=fp["chat_template"])
        return env


def _release_device_memory() -> None:
    """After a failed cell (an OOM above all), hand cached blocks back so the next cell starts clean."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_outputs(results: GateResults, *, report: Path | None, json_path: Path | None) -> list[Path]:
    """Write the HTML report and the results JSON (each atomically); return what was written."""
    written = []
    if json_path is not None:
        save_results(results, json_path)
        written.append(json_path)
    if report is not None:
        from .report import write_html

        write_html(results, report)
        written.append(report)
    return written


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "scipy", "jinja2", "gguf", "accelerate", "pytest", "pytest-longctx"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.version.cuda and torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
    return found


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
