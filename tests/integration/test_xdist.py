"""Gates under pytest-xdist: cells spread over workers, one decision at the controller, optional GPU pinning."""

from __future__ import annotations

import os

from pytest_longctx.gate.results import load_results


def _cells(results):
    return {(c.variant, c.task, c.length, c.depth, c.seed): (c.answer, c.found, c.kv_bytes, c.error) for c in results.cells}


def test_two_workers_give_the_serial_run_s_decision_and_answers(pytester, write_gate, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("THREADPROBE_DIR", str(pytester.path))
    # Reports each worker's torch threads; a plugin module, so `-p` loads it in every worker.
    pytester.makepyfile(threadprobe="""
        import os, sys

        def pytest_sessionfinish(session):
            worker = os.environ.get("PYTEST_XDIST_WORKER")
            if worker and "torch" in sys.modules:
                with open(os.path.join(os.environ["THREADPROBE_DIR"], f"threads-{worker}.txt"), "w") as out:
                    out.write(str(sys.modules["torch"].get_num_threads()))
        """)
    gate = write_gate(sweep={"lengths": [256, 384], "depths": [0.0, 0.5, 1.0], "seeds": [0], "max_new_tokens": 4, "repeats": 2})
    common = ("--longctx-gate", str(gate), "--longctx-model", str(tiny_model_dir), "-p", "no:cacheprovider")
    serial = pytester.runpytest(*common, "--longctx-json", "serial.json")
    spread = pytester.runpytest(*common, "--longctx-json", "spread.json", "-n", "2", "-p", "threadprobe")
    serial.assert_outcomes(passed=13)  # 12 recall cells and timing pass 2
    spread.assert_outcomes(passed=13)
    one, two = load_results(pytester.path / "serial.json"), load_results(pytester.path / "spread.json")
    assert two.decision.verdict == one.decision.verdict == "approve"
    assert _cells(two) == _cells(one)
    assert all(c.repeats == 2 and len(c.total_samples) == 2 for c in two.cells)  # both passes reached the controller
    # Each worker's torch got its share of the cores, not one thread per core each (oversubscribed timings).
    shares = {p.name: int(p.read_text()) for p in pytester.path.glob("threads-gw*.txt")}
    assert shares == {"threads-gw0.txt": max(1, os.cpu_count() // 2), "threads-gw1.txt": max(1, os.cpu_count() // 2)}


def test_pinned_workers_each_see_one_device(pytester, monkeypatch):
    pytester.makepyfile(
        """
        import os, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_device(i, worker_id):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == {"gw0": "6", "gw1": "7"}[worker_id]
        """
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,7")
    result = pytester.runpytest("-n", "2", "--longctx-pin-gpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    unpinned = pytester.runpytest("-n", "2", "-p", "no:cacheprovider")
    unpinned.assert_outcomes(failed=4)
