"""Users' own long-context tests through pytester: the fixtures, the longctx and gpu markers, and the example file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_longctx.backends.loading import cache_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# pytester points HOME at its own directory; keep the dequantized embedded model's warm cache (read at import).
WARM_CACHE = cache_dir()


def test_marker_expands_into_cells_with_readable_ids(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.longctx(lengths=[4096, 1024], depths=[0.0, 0.5], seeds=[0])
        def test_cell(longctx_cell):
            assert longctx_cell.length in (4096, 1024) and longctx_cell.seed == 0

        @pytest.mark.longctx(lengths=[512])
        @pytest.mark.parametrize("cache", ["auto", "fp8"])
        def test_with_parametrize(longctx_cell, cache):
            assert (longctx_cell.depth, cache in ("auto", "fp8")) == (0.5, True)

        @pytest.mark.longctx(lengths=[256], depths=[1.0])
        class TestOnAClass:
            def test_method(self, longctx_cell):
                assert longctx_cell.depth == 1.0

        def test_unmarked(longctx_cell):
            assert longctx_cell is None

        @pytest.mark.gpu
        def test_needs_cuda():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "-v", "-rs", "-p", "no:cacheprovider")

    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=8, skipped=1)
    result.stdout.fnmatch_lines_random([
        "*::test_cell[[]4096-d0-s0[]] PASSED*",
        "*::test_cell[[]1024-d50-s0[]] PASSED*",
        "*::test_with_parametrize[[]512-d50-s0-fp8[]] PASSED*",
        "*::TestOnAClass::test_method[[]256-d100-s0[]] PASSED*",
        "SKIPPED*needs a CUDA device: torch.cuda.is_available() is False*",
    ])
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.longctx(lengths=[...], depths=[0.5], seeds=[0])" in markers
    assert "@pytest.mark.gpu" in markers


def test_bad_marker_arguments_are_collection_errors_naming_the_test(pytester):
    pytester.makepyfile(
        test_depth="""
            import pytest

            @pytest.mark.longctx(lengths=[4096], depths=[1.5])
            def test_too_deep(longctx_cell):
                pass
            """,
        test_length="""
            import pytest

            @pytest.mark.longctx(lengths=[-4096])
            def test_negative(longctx_cell):
                pass
            """,
        test_unused="""
            import pytest

            @pytest.mark.longctx(lengths=[4096])
            def test_ignores_the_cell():
                pass
            """,
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines_random([
        r"*test_depth.py::test_too_deep: @pytest.mark.longctx: depths: 1.5 is outside [[]0.0, 1.0[]]*",
        "*test_length.py::test_negative: @pytest.mark.longctx: lengths: -4096 is not a positive number of tokens*",
        "*test_unused.py::test_ignores_the_cell: @pytest.mark.longctx needs the test to take `longctx_cell` or `haystack`*",
    ])
    assert "Traceback" not in result.stdout.str()


FIXTURE_TESTS = """
import pytest

from pytest_longctx.tasks.haystack import Needle

LOADED = []


def test_model_is_loaded_once_and_variants_share_weights(model):
    LOADED.append(model)
    fp8 = model.variant(kv_cache_dtype="fp8")
    assert fp8.torch_model is model.torch_model
    assert fp8.variant_spec.cache_plan().kv_cache_dtype == "fp8" and model.variant_spec.cache_plan().kv_cache_dtype == "auto"
    with pytest.raises(TypeError, match="rope_scaling"):
        model.variant(rope_scaling={"type": "yarn"})


@pytest.mark.longctx(lengths=[300, 420], depths=[0.0, 1.0])
def test_haystack_follows_the_cell(model, haystack, longctx_cell):
    LOADED.append(model)
    prompt = haystack()
    assert prompt.tokens == longctx_cell.length
    assert prompt.actual_depth == longctx_cell.depth
    start, end = prompt.needle_span
    assert prompt.answer in model.tokenizer.decode(list(prompt.token_ids[start:end]))
    reply = model.generate(prompt, max_new_tokens=3)
    assert reply.new_tokens >= 1 and reply.prefill_s > 0


def test_haystack_with_own_needle_filler_and_several_needles(haystack):
    document = "\\n".join(f"Ticket {i}: the customer asked about shipping times." for i in range(200))
    refund = Needle("Refunds are accepted within 45 days.", "Within how many days are refunds accepted?", "45 days")
    prompt = haystack(length=500, depth=0.5, needle=refund, filler=document)
    assert prompt.tokens == 500 and "Ticket 0:" in prompt.prompt_text and prompt.answer == "45 days"
    several = haystack(length=500, needles=3)
    assert several.tokens == 500 and len(several.needle_spans) == 3


@pytest.mark.parametrize("cache, dtype, scale", [("auto", None, None), ("fp8", "fp8", "token_head")])
def test_kv_budget_measures_what_the_config_predicts(model, kv_budget, cache, dtype, scale):
    LOADED.append(model)
    with kv_budget.measure() as measured:
        model.variant(kv_cache_dtype=cache).generate(list(range(5, 205)), max_new_tokens=1)
    assert measured.kv_tokens == 200
    assert measured.kv_bytes == kv_budget.sequence_bytes(200, dtype, scale=scale)
    assert measured.peak_bytes is None


def test_one_model_for_the_session():
    assert len({id(m) for m in LOADED}) == 1 and len(LOADED) == 7
"""


def test_fixtures_on_a_model_given_on_the_command_line(pytester, tiny_model_dir):
    pytester.makepyfile(test_fixtures=FIXTURE_TESTS)
    result = pytester.runpytest("--longctx-model", str(tiny_model_dir), "--strict-markers", "-p", "no:cacheprovider")

    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=9)


def test_ini_key_names_the_model_and_the_option_wins(pytester, tiny_model_dir):
    pytester.makeini(f"[pytest]\nlongctx_model = {tiny_model_dir}\n")
    pytester.makepyfile(
        f"""
        def test_model_from_ini(model, request):
            expected = request.config.getoption("longctx_model") or {str(tiny_model_dir)!r}
            assert model.ref == expected
            assert model.kv_shape.layers == 2
        """
    )
    assert pytester.runpytest("-p", "no:cacheprovider").ret == 0
    missing = pytester.runpytest("--longctx-model", "/no/such/model", "-p", "no:cacheprovider")
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(["*the `model` fixture cannot load /no/such/model: model path /no/such/model does not exist*"])


def test_model_fixture_shares_the_gate_runs_loaded_model(pytester, write_gate, tiny_model_dir):
    gate = write_gate(sweep={"lengths": [256], "depths": [0.5], "max_new_tokens": 2})
    pytester.makepyfile(
        test_beside_gate="""
        from pytest_longctx.plugin import SESSION_KEY

        def test_same_backend(model, request):
            run = request.config.stash[SESSION_KEY].runs["tiny"]
            assert model.backend is run.backend()
        """
    )
    result = pytester.runpytest("test_beside_gate.py", "--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir),
                                "-p", "no:cacheprovider")

    result.assert_outcomes(passed=3)  # two gate cells and the test


@pytest.mark.slow
def test_refund_clause_example_passes_on_the_embedded_model(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_LONGCTX_CACHE", str(WARM_CACHE))
    # The repository's layout: the example under examples/, its filler under fixtures/corpora/.
    (pytester.path / "examples").mkdir()
    shutil.copy(EXAMPLES / "test_refund_clause.py", pytester.path / "examples" / "test_refund_clause.py")
    (pytester.path / "fixtures" / "corpora").mkdir(parents=True)
    shutil.copy(EXAMPLES.parent / "fixtures" / "corpora" / "support_transcript.txt", pytester.path / "fixtures" / "corpora")

    result = pytester.runpytest("--strict-markers", "-v", "-p", "no:cacheprovider")

    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines_random([
        "*test_refund_clause_survives_every_depth[[]1024-d50-s0-fp8[]] PASSED*",
        "*test_fp8_kv_cache_stays_within_its_budget PASSED*",
    ])
