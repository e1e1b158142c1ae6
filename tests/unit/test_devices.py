"""Pinning xdist workers to CUDA devices."""

from __future__ import annotations

import pytest

from pytest_longctx.backends.devices import worker_device


@pytest.mark.parametrize(
    "worker,visible,expected",
    [("gw0", None, "0"), ("gw3", "", "3"), ("gw1", "4,5,6,7", "5"), ("gw5", "2,3", "3"), ("gw0", " 6 ", "6")],
)
def test_each_worker_gets_its_own_device(worker, visible, expected):
    assert worker_device(worker, visible) == expected


def test_a_non_worker_id_is_refused():
    with pytest.raises(ValueError, match="not an xdist worker id"):
        worker_device("master", None)


def test_xdist_workers_share_the_cores_unless_the_user_chose():
    from pytest_longctx.backends.devices import worker_threads

    assert worker_threads(2, 2, None) == 1
    assert worker_threads(4, 32, None) == 8
    assert worker_threads(8, 2, None) == 1  # never zero
    assert worker_threads(2, 16, "6") is None  # OMP_NUM_THREADS set: left alone
    assert worker_threads(2, None, None) is None
