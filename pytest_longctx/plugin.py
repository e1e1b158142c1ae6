"""pytest wiring for pytest-longctx: options, the gate's items, the decision in the summary and the exit status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .session import LongctxSession

SESSION_KEY = pytest.StashKey[LongctxSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("longctx", "long-context regression gate (pytest-longctx)")
    group.addoption("--longctx-gate", action="append", dest="longctx_gates", default=[], metavar="PATH",
                    help="run the gate described by this YAML file (repeatable)")
    group.addoption("--longctx-report", dest="longctx_report", metavar="PATH",
                    help="write the HTML report here (default: the gate's `report:`, else reports/<gate>.html)")
    group.addoption("--longctx-json", dest="longctx_json", metavar="PATH",
                    help="write the results JSON here (default: the gate's `results:`, else beside the report)")
    group.addoption("--longctx-model", dest="longctx_model", metavar="REF",
                    help="override the gate's model: embedded:NAME, a directory, a .gguf file or a cached hub id "
                         "(also the `model` fixture's)")
    parser.addini("longctx_model", "the `model` fixture's model when --longctx-model is not given (default: the "
                  "gate's, else embedded:smollm2-135m-instruct)", default="")
    group.addoption("--longctx-capture", action="store_true", dest="longctx_capture", default=False,
                    help="run the baseline side alone and write it as the gate's captured baseline (atomically)")
    group.addoption("--longctx-pin-gpu", action="store_true", dest="longctx_pin_gpu", default=False,
                    help="under pytest-xdist, pin each worker to one CUDA device (CUDA_VISIBLE_DEVICES from its id)")
    group.addoption("--longctx-overwrite-baseline", action="store_true", dest="longctx_overwrite_baseline", default=False,
                    help="let --longctx-capture replace an existing captured baseline")


def _share_cores(worker_count: int) -> None:
    """Each gate worker gets its share of the cores, before torch (imported lazily) reads OMP_NUM_THREADS."""
    import os
    import sys

    from .backends.devices import worker_threads

    threads = worker_threads(worker_count, os.cpu_count(), os.environ.get("OMP_NUM_THREADS"))
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # another plugin imported it first
            sys.modules["torch"].set_num_threads(threads)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _register_changes(config: pytest.Config) -> None:
    """Plugins' and conftests' own change kinds, registered before any gate file is parsed."""
    from .changes.registry import register

    def checked(change: type) -> type:
        try:
            return register(change)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest_longctx_register_changes: {exc}") from None

    config.hook.pytest_longctx_register_changes(register=checked)


def pytest_configure(config: pytest.Config) -> None:
    _register_test_markers(config)
    _register_changes(config)
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is not None and config.getoption("longctx_pin_gpu"):
        import os

        from .backends.devices import worker_device

        # Before anything initialises CUDA in this worker process.
        os.environ["CUDA_VISIBLE_DEVICES"] = worker_device(worker, os.environ.get("CUDA_VISIBLE_DEVICES"))
    paths = config.getoption("longctx_gates")
    if not paths:
        return
    if worker is not None:
        _share_cores(getattr(config, "workerinput", {}).get("workercount", 1))
    from .gate.spec import GateError

    try:
        config.stash[SESSION_KEY] = LongctxSession.from_options(
            paths,
            report=config.getoption("longctx_report"),
            json_path=config.getoption("longctx_json"),
            model=config.getoption("longctx_model"),
            base_dir=Path(config.invocation_params.dir),
            rootdir=config.rootpath,  # outputs a gate file names stay under it
            capture=config.getoption("longctx_capture"),
            overwrite_baseline=config.getoption("longctx_overwrite_baseline"),
        )
    except GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(_CellRecorder(config.stash[SESSION_KEY]), "longctx-recorder")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `pytest --longctx-gate g.yaml` runs the gate alone; test files run beside it only when named explicitly.
    if SESSION_KEY in config.stash and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so those select cells too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION_KEY in config.stash:
        items.extend(config.stash[SESSION_KEY].items(session))


class _CellRecorder:
    """Collects cell results from test reports; registered only when a gate runs (`logreport` gets no config)."""

    def __init__(self, session: LongctxSession) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.session.record(report.nodeid, report.user_properties)


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file, so the gate's properties are in it
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Workers (xdist) only measure; with --collect-only nothing was measured, so there is nothing to decide.
    if SESSION_KEY not in session.config.stash or hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return
    longctx = session.config.stash[SESSION_KEY]
    status = longctx.finish()
    if status and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _add_junit_properties(session.config, longctx.junit_properties())


def _add_junit_properties(config: pytest.Config, properties: list[tuple[str, str]]) -> None:
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # junitxml is pytest's own plugin; its stash key is not public API
        return
    xml = config.stash.get(xml_key, None)  # set only when --junitxml is active
    if xml is None:
        return
    for name, value in properties:
        xml.add_global_property(name, value)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Every process that launched a server (an xdist worker too) stops it, whatever ended the run.
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        terminalreporter.section("longctx gate")
        for line in config.stash[SESSION_KEY].summary_lines():
            terminalreporter.write_line(line)


# --- Building blocks for users' own long-context tests: fixtures `model`, `haystack`, `kv_budget`, `longctx_cell`,
# markers `longctx` and `gpu`. The logic lives in model_handle, haystack_factory, kv_budget and cell_marker.

if TYPE_CHECKING:
    from .capacity.kv_budget import KvBudget
    from .marker import LongctxCell
    from .testing.haystack import HaystackFactory
    from .testing.model import ModelHandle


def _register_test_markers(config: pytest.Config) -> None:
    from .backends.devices import GPU_MARKER_HELP
    from .marker import MARKER_HELP

    config.addinivalue_line("markers", MARKER_HELP)
    config.addinivalue_line("markers", GPU_MARKER_HELP)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("longctx")
    if marker is None:
        return
    from .marker import MarkerError, cells_from_marker

    try:
        cells = cells_from_marker(marker.args, marker.kwargs)
    except MarkerError as exc:
        pytest.fail(f"{metafunc.definition.nodeid}: @pytest.mark.longctx: {exc}", pytrace=False)
    if "longctx_cell" not in metafunc.fixturenames:
        pytest.fail(f"{metafunc.definition.nodeid}: @pytest.mark.longctx needs the test to take `longctx_cell` "
                    "or `haystack` (the cell reaches the test through them)", pytrace=False)
    metafunc.parametrize("longctx_cell", cells, ids=[cell.id for cell in cells], indirect=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        from .backends.devices import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture
def longctx_cell(request: pytest.FixtureRequest) -> LongctxCell | None:
    """The (length, depth, seed) cell of a test marked `@pytest.mark.longctx`; None in an unmarked test."""
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def model(pytestconfig: pytest.Config) -> ModelHandle:
    """The session's model (`--longctx-model`, ini `longctx_model`, the gate's, or the embedded one), loaded once."""
    from .backends.loading import ModelLoadError
    from .testing.model import open_model, resolve_model_spec

    gate_session = pytestconfig.stash.get(SESSION_KEY, None)
    spec = resolve_model_spec(option=pytestconfig.getoption("longctx_model"), ini=pytestconfig.getini("longctx_model"),
                              gates=gate_session.gates if gate_session else ())
    try:
        return open_model(spec, gate_runs=gate_session.runs.values() if gate_session else ())
    except ModelLoadError as exc:
        pytest.fail(f"the `model` fixture cannot load {spec.ref}: {exc}", pytrace=False)


@pytest.fixture
def haystack(model: ModelHandle, longctx_cell: LongctxCell | None) -> HaystackFactory:
    """A factory of token-exact needle prompts for `model`: `haystack(length=4096, depth=0.5, needle=...)`."""
    from .testing.haystack import HaystackFactory

    return HaystackFactory(model.tokenizer, cell=longctx_cell)


@pytest.fixture
def kv_budget(model: ModelHandle) -> KvBudget:
    """KV math for `model`'s config and dtype, with `measure()` to record the KV bytes of a block."""
    from .capacity.kv_budget import KvBudget

    return KvBudget.for_model(model)
