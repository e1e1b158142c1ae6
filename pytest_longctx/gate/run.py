"""One gate run, independent of pytest: lazy model, shared prompts, recorded cells, the decision and its outputs."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .load import LoadLevel
from .results import CellResult, GateResults, TimingSample, save_results
from .spec import GateSpec, TimingSpec, VariantSpec
from .sweep import Cell, build_prompt, errored_cell, interleaved, merge_samples, run_cell, task_spec, timed_run

if TYPE_CHECKING:
    from ..backends.in_process import Backend


class CellError(RuntimeError):
    """A cell that could not be measured; its item fails and the gate cannot approve."""


def _default_backend(gate: GateSpec, variant: VariantSpec) -> Backend:
    """The in-process model for one side, with what its changes apply at load time (RoPE, dtype, kernels)."""
    from ..backends.in_process import TransformersBackend
    from ..backends.loading import AttnImplementation, load_model

    if variant.served is not None:
        raise ValueError("a served variant's backend comes from GateRun.served_backend")
    plan = variant.load_plan(gate.model)
    spec = plan.model
    model, tokenizer, fingerprint = load_model(
        spec.ref, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code,
        # LoadPlan types it str; the attn_implementation change admits only its values when the gate is parsed.
        rope=plan.rope, attn_implementation=cast("AttnImplementation | None", plan.attn_implementation),
    )
    return TransformersBackend(model, tokenizer, fingerprint=fingerprint)


BackendFactory = Callable[[GateSpec, VariantSpec], "Backend"]


class GateRun:
    """Measures the cells of one gate (in any order, any subset) and turns what was recorded into results."""

    def __init__(
        self, gate: GateSpec, *, backend_factory: BackendFactory = _default_backend, capture: bool = False,
        log_dir: Path = Path("reports"),
    ) -> None:
        self.gate = gate
        self.log_dir = log_dir
        self.server_logs: dict[str, Path] = {}
        self.load_seconds: dict[str, float] = {}  # per side that loaded a model: how long the load took (warm cache)
        self.import_seconds: dict[str, float] = {}  # ... and importing the libraries before it (once per process)
        self._exit = contextlib.ExitStack()
        self.capture = capture
        self._backend_factory = backend_factory
        # One loaded model per distinct load-time setting: sides that differ only in cache or prompt share it.
        self._backends: dict[tuple[Any, ...], Backend] = {}
        self._load_errors: dict[tuple[Any, ...], BaseException] = {}
        self._prompts: dict[tuple[Any, ...], Any] = {}
        self._fingerprint: dict[str, str] | None = None
        self.cells: list[CellResult] = []
        self.samples: list[TimingSample] = []
        self.loss_curves: dict[str, dict[str, Any]] = {}
        # Cells whose recall run failed here: their timing passes would fail the same way.
        self._failed: set[tuple[str, Cell]] = set()
        self._prefix_store: Any = None
        self._stop_reasons: dict[int, str | None] = {}  # sequential gates: per look, why it was skipped
        self._started = time.perf_counter()
        self.load_levels: list[LoadLevel] = []  # the load sweep's levels, per side (gate/load.py)
        self.load_prompts: dict[tuple[str, int], list[list[int]]] = {}
        self._load_started: float | None = None

    @property
    def variants(self) -> tuple[VariantSpec, ...]:
        """The sides this run measures: the baseline alone when capturing, the candidate alone against a capture."""
        if self.capture:
            return (self.gate.baseline,)
        if self.gate.captured_baseline is not None:
            return (self.gate.candidate,)
        return self.gate.variants

    @property
    def _load_error(self) -> BaseException | None:
        return next(iter(self._load_errors.values()), None)

    def backend(self, variant: VariantSpec | None = None) -> Backend:
        """The model `variant` runs on (default: the first side measured), loaded once and warmed up untimed.

        A failed load is remembered, not retried per cell.
        """
        variant = variant or self.variants[0]
        key = variant.load_key(self.gate.model)
        if key in self._load_errors:
            spec = variant.model_spec(self.gate.model)
            raise CellError(f"model {spec.ref} failed to load: {self._load_errors[key]}")
        if key not in self._backends:
            try:
                if variant.served is None and self._backend_factory is _default_backend:
                    self._import_model_code(variant)
                started = time.perf_counter()
                backend = self.served_backend(variant) if variant.served is not None else self._backend_factory(self.gate, variant)
                self.load_seconds[variant.name] = time.perf_counter() - started
                warm_text = "Warm-up: the first forward pass pays one-off costs."
                warm = backend.tokenizer.encode(warm_text) if hasattr(backend.tokenizer, "encode") else [1, 2, 3]
                for side in self.variants:
                    if side.load_key(self.gate.model) == key:
                        _warm_up(backend, warm, side)
            except Exception as exc:
                self._load_errors[key] = exc
                raise
            self._backends[key] = backend
        return self._backends[key]

    def _import_model_code(self, variant: VariantSpec) -> None:
        """The libraries' one-off import cost, timed apart from the model load (reported as library_import_s)."""
        from ..backends.loading import import_model_code

        spec = variant.model_spec(self.gate.model)
        started = time.perf_counter()
        try:
            import_model_code(spec.ref, trust_remote_code=spec.trust_remote_code)
        except Exception:  # noqa: BLE001 - the load that follows reports what is wrong, with its own message
            return
        self.import_seconds[variant.name] = time.perf_counter() - started

    def served_backend(self, variant: VariantSpec) -> Backend:
        """An OpenAI-compatible engine for `variant`: at its base URLs, or started now (and stopped by `close`).

        Prompts are token-exact with the local tokenizer of the variant's model reference, or with the engine's
        own (`tokenizer: server`); the model's config gives the KV shape for the analytic estimate when the
        engine reports no cache usage.
        """
        from ..backends.loading import load_config, load_tokenizer, resolve
        from ..backends.served.client import ServedBackend
        from ..capacity.kv_math import KvShape

        engine = variant.served
        assert engine is not None
        spec = variant.model_spec(self.gate.model)
        urls = list(engine.base_urls)
        if engine.launch is not None:
            from ..backends.served.launch import launched

            resolved = resolve(spec.ref)
            # {model} in the command: the file or folder the reference resolves to (the GGUF for embedded models).
            model_arg = str(resolved.gguf_path or resolved.location)
            self.server_logs[variant.name] = self.log_dir / f"{self.gate.name}.{variant.name}.server.log"
            urls = [self._exit.enter_context(launched(engine.launch, model=model_arg, log_path=self.server_logs[variant.name]))]
        tokenizer = load_tokenizer(spec.ref, trust_remote_code=spec.trust_remote_code)
        if engine.tokenizer == "server":
            from ..backends.served.remote_tokenizer import RemoteTokenizer

            # The engine's own ids (llama.cpp pre-tokenizes some text differently); ours decodes and templates.
            tokenizer = RemoteTokenizer(urls[0], local=tokenizer)
        return ServedBackend(
            urls, tokenizer=tokenizer,
            kv_shape=KvShape.from_config(load_config(spec.ref, trust_remote_code=spec.trust_remote_code)),
            api=engine.api, max_concurrency=engine.max_concurrency, kv_bytes_per_element=engine.kv_bytes_per_element,
            server_log=self.server_logs.get(variant.name) if engine.launch is not None else None, cold_timing=engine.cold_timing,
        )

    def close(self) -> None:
        """Stop the servers this run launched (their logs stay)."""
        self._exit.close()

    def prompt(self, cell: Cell, variant: VariantSpec | None = None) -> Any:
        """The cell's prompt for `variant`. Sides on one tokenizer with one prompt layout get the very same
        token ids (built once); a prompt-level change or another tokenizer gets its own. A change that transforms a
        built prompt (retrieval) works on the very prompt the other side gets in full."""
        variant = variant or self.variants[0]
        tokenizer = self.backend(variant).tokenizer
        key = (id(tokenizer), variant.prompt_key(), cell)
        if key not in self._prompts:
            self._prompts[key] = build_prompt(tokenizer, task_spec(self.gate.sweep, cell.task), cell, variant)
            for change in variant.changes:
                transformed = change.transform(tokenizer, self._prompts[key])
                if transformed is not None:
                    self._prompts[key] = transformed
        return self._prompts[key]

    def measure(self, variant: VariantSpec, cell: Cell) -> CellResult:
        """The recall run of one cell; on failure return an errored record (the caller reports it and fails the item).

        A timed cell's recall run is a full, uncached run and its first timing sample; an untimed cell may
        reuse the cached prefix it shares with a cell run before it (same side, same cache settings).
        """
        prompt = None
        try:
            prompt = self.prompt(cell, variant)
            sweep = self.gate.sweep
            result = run_cell(
                self.backend(variant), variant, cell, prompt, max_new_tokens=sweep.max_new_tokens,
                timeout_s=sweep.cell_timeout_s, timed=sweep.timed(cell.length, cell.depth, cell.seed),
                reuse=self.prefix_store(variant),
            )
        except Exception as exc:  # noqa: BLE001 - any failure of a cell (OOM and timeouts too) is recorded
            _release_device_memory()
            self._failed.add((variant.name, cell))
            return errored_cell(variant, cell, f"{type(exc).__name__}: {exc}", prompt)
        return result

    def prefix_store(self, variant: VariantSpec) -> Any:
        """The recall pass's cache of prompts run so far, for untimed cells to start from (in-process models
        only, and only when some cell is untimed: a timed cell always runs from scratch)."""
        sweep = self.gate.sweep
        if variant.served is not None or sweep.timing == TimingSpec():
            return None
        if self._prefix_store is None:
            from ..backends.prefix_reuse import PrefixStore

            # One entry per haystack a depth cell can share a prefix with: per seed and task, before the next length.
            self._prefix_store = PrefixStore(max_entries_per_key=min(8, len(sweep.seeds) * len(sweep.tasks) + 1))
        return self._prefix_store

    def stop_reason(self, look: int) -> str | None:
        """Why a sequential gate's look `look` need not run (the looks before it decided the verdict), else None.

        Asked by the look's items as they start, so every item of the looks before it has been recorded; the
        answer is kept, since the cells of those looks no longer change.
        """
        if self.gate.sweep.sequential is None or look <= 1:
            return None
        if look not in self._stop_reasons:
            from .decision import compute_metrics, decide
            from .sequential import stop_reason

            earlier = self.stop_reason(look - 1)
            self._stop_reasons[look] = earlier or stop_reason(self.gate, self.merged_cells(), look, loss_curves=self.loss_curves,
                                                              compute_metrics=compute_metrics, decide=decide)
        return self._stop_reasons[look]

    @property
    def timing_passes(self) -> tuple[int, ...]:
        """The numbers of the timing passes after the recall pass (whose timed cells give sample 1)."""
        return tuple(range(2, self.gate.sweep.repeats + 1))

    def timing_pass(self, number: int, look: int | None = None) -> list[TimingSample]:
        """Timing pass `number`: one more full, uncached run of every timed cell (of sequential look `look` only).

        Passes sweep the whole gate in ABBA order, flipping which side leads from one pass to the next, so a
        cell's repeats are minutes apart and a burst of load on a shared runner cannot hit all of them. Cells of
        a sequential look that was skipped never ran, so they are not timed either.
        """
        sweep = self.gate.sweep
        samples = []
        for variant, cell in interleaved(self.gate, self.variants, flip=number % 2 == 0):
            key = (variant.name, cell)
            if key in self._failed or not sweep.timed(cell.length, cell.depth, cell.seed):
                continue
            if sweep.sequential is not None:
                cell_look = sweep.sequential.look_of(cell.seed)
                if (look is not None and cell_look != look) or self.stop_reason(cell_look) is not None:
                    continue
            try:
                prompt = self.prompt(cell, variant)
            except Exception as exc:  # noqa: BLE001 - recorded against the cell
                self._failed.add(key)
                samples.append(TimingSample(variant.name, cell.task, cell.length, cell.depth, cell.seed, None, None, None, "",
                                            f"{type(exc).__name__}: {exc}"))
                continue
            sample = timed_run(self.backend(variant), variant, cell, prompt, max_new_tokens=sweep.max_new_tokens,
                               timeout_s=sweep.cell_timeout_s)
            if sample.error is not None:
                _release_device_memory()
                self._failed.add(key)
            samples.append(sample)
        return samples

    def loss_curve(self, variant: VariantSpec) -> dict[str, Any]:
        """Next-token loss by position over the gate's long seeded text, through `variant`'s model and cache."""
        from ..backends.contributions import build_cache
        from .loss_curve import long_text, loss_by_position

        spec = self.gate.sweep.loss
        assert spec is not None
        backend = self.backend(variant)
        model = getattr(backend, "model", None)  # only an in-process backend holds one
        if model is None:
            raise ValueError(f"the loss pass needs an in-process model; side {variant.name} runs on a served engine")
        ids = backend.tokenizer(long_text(backend.tokenizer, spec.tokens, spec.seed), add_special_tokens=False)["input_ids"]
        cache = build_cache(variant.cache_plan(), model.config)
        curve = loss_by_position(model, ids, buckets=spec.buckets, cache=cache)
        return {"variant": variant.name, "edges": list(curve.edges), "losses": list(curve.losses),
                "counts": list(curve.counts), "tokens": curve.tokens}

    def load_level(self, variant: VariantSpec, concurrency: int) -> LoadLevel:
        """One level of the load sweep on `variant`'s launched engine; its time budget runs from the first level."""
        from .load_run import measure_level

        if self._load_started is None:
            self._load_started = time.perf_counter()
        return measure_level(self.gate, lambda: self.backend(variant), variant, concurrency, prompts=self.load_prompts,
                             started=self._load_started)

    def record_load(self, level: LoadLevel) -> None:
        self.load_levels.append(level)

    def record_loss(self, record: dict[str, Any]) -> None:
        self.loss_curves[record["variant"]] = record

    def record(self, cell: CellResult) -> None:
        self.cells.append(cell)

    def record_samples(self, samples: list[TimingSample]) -> None:
        self.samples.extend(samples)

    def merged_cells(self) -> list[CellResult]:
        """Recorded recall cells with every timing pass's samples folded in."""
        sweep = self.gate.sweep
        return [
            merge_samples(c, self.samples, repeats=sweep.repeats if sweep.timed(c.length, c.depth, c.seed) else 0,
                          statistic=sweep.repeat_statistic)
            for c in self.cells
        ]

    def fingerprint(self) -> dict[str, str]:
        """The baseline model's fingerprint, computed once (it hashes the tokenizer's whole vocabulary).

        A captured baseline is checked against the baseline side's model, also when only the candidate runs.
        """
        if self._fingerprint is None:
            from .capture import fingerprint

            side = self.gate.baseline
            backend = self.backend(side)
            # The files behind the reference are what an in-process load read; a custom factory's or an engine's are not.
            in_process = side.backend != "openai" and self._backend_factory is _default_backend
            self._fingerprint = fingerprint(backend, ref=side.model_spec(self.gate.model).ref if in_process else None)
        return self._fingerprint

    def captured(self) -> Any:
        """This run's baseline side as a captured baseline (complete runs only; the caller writes it)."""
        from .capture import build_capture, require_complete

        # Completeness first: a failed model load or a `-k` subset must not load the model just to fingerprint it.
        cells = self.merged_cells()
        require_complete(self.gate, cells)
        return build_capture(self.gate, cells, self.fingerprint())

    def results(self) -> GateResults:
        from .decision import evaluate

        cells, problems = self.merged_cells(), []
        if self.gate.captured_baseline is not None:
            from .capture import CaptureError, load_capture, mismatches

            try:
                capture = load_capture(self.gate.captured_baseline)
                cells += [c for c in capture.cells if c.variant == self.gate.baseline.name]
                current = {} if self._load_error is not None else self.fingerprint()
                problems = mismatches(capture, self.gate, current)
            except (CaptureError, CellError) as exc:
                problems = [str(exc)]
        metrics, decision = evaluate(self.gate, cells, fingerprint_mismatches=problems, loss_curves=self.loss_curves)
        if self.gate.sweep.load is not None:
            from .load_decision import apply_load

            metrics, decision = apply_load(self.gate, metrics, decision, self.load_levels)
        return GateResults(
            gate=self.gate.to_dict(),
            decision=decision,
            metrics=metrics,
            cells=tuple(sorted(cells, key=lambda c: (c.task, c.length, c.depth, c.seed, c.variant))),
            load_levels=tuple(sorted(self.load_levels, key=lambda level: (level.concurrency, level.variant))),
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
        if self.load_seconds:
            env["model_load_s"] = {name: round(seconds, 3) for name, seconds in self.load_seconds.items()}
        if self.import_seconds:
            env["library_import_s"] = {name: round(seconds, 3) for name, seconds in self.import_seconds.items()}
        if self.server_logs:
            env["server_logs"] = {name: str(path) for name, path in self.server_logs.items()}
        if self._backends:
            fp = self.fingerprint()
            env.update(model_fingerprint=fp["model_weights"], tokenizer_sha256=fp["tokenizer"], chat_template_sha256=fp["chat_template"])
        return env


def _warm_up(backend: Backend, tokens: list[int], side: VariantSpec) -> None:
    """One untimed generation per side, so its first timed cell pays no one-off costs. A side whose own change
    fails here is not a failed model load: its cells fail on their own, naming the change, and the other side runs."""
    from ..changes.user import ChangeFailed

    try:
        backend.generate(tokens, variant=side, max_new_tokens=2)
    except ChangeFailed:
        return


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
        from ..output.report import write_html

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
