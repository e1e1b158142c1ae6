"""The longctx marker's arguments: cells in order with readable ids, defaults, and errors that say the fix."""

from __future__ import annotations

import pytest

from pytest_longctx.marker import LongctxCell, MarkerError, cells_from_marker


def test_cells_cover_every_combination_lengths_first():
    cells = cells_from_marker((), {"lengths": [4096, 1024], "depths": [0.0, 0.5], "seeds": [0, 1]})

    assert [c.id for c in cells] == [
        "4096-d0-s0", "4096-d0-s1", "4096-d50-s0", "4096-d50-s1",
        "1024-d0-s0", "1024-d0-s1", "1024-d50-s0", "1024-d50-s1",
    ]
    assert cells[2] == LongctxCell(4096, 0.5, 0)


def test_defaults_and_depth_ids():
    assert cells_from_marker((), {"lengths": (512,)}) == [LongctxCell(512, 0.5, 0)]
    ids = [c.id for c in cells_from_marker((), {"lengths": [8], "depths": [1, 0.25, 1 / 3]})]
    assert ids == ["8-d100-s0", "8-d25-s0", "8-d33.3333-s0"]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"lengths": [4096], "depths": [1.5]}, r"depths: 1.5 is outside \[0.0, 1.0\]"),
        ((), {"lengths": [-4096]}, "lengths: -4096 is not a positive number of tokens"),
        ((), {"lengths": [4096.0]}, "lengths: 4096.0 is not a positive"),
        ((), {"lengths": [True]}, "lengths: True"),
        ((), {"lengths": 4096}, r"lengths must be a list, got 4096; write lengths=\[4096\]"),
        ((), {"lengths": []}, "lengths is empty"),
        ((), {"lengths": [1, 1]}, "lists a value twice"),
        ((), {"depths": [0.5]}, "needs lengths="),
        ((), {"lengths": [8], "depth": [0.5]}, "unknown argument 'depth'"),
        (([8],), {}, "keyword arguments only"),
        ((), {"lengths": [8], "depths": ["mid"]}, "depths: 'mid' is not a number"),
        ((), {"lengths": [8], "seeds": [-1]}, "seeds: -1 is not a non-negative integer"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(MarkerError, match=message):
        cells_from_marker(args, kwargs)
