"""The limits a gate file must keep (docs/limits.md lists them), and the bounded repr every error message uses."""

from __future__ import annotations

import re
import reprlib
from typing import Any

# The file and its YAML: a gate is a page of settings; these bound the work before any key is read.
MAX_FILE_BYTES = 1 << 20  # 1 MiB; the shipped gates are under 2 KiB
MAX_YAML_NODES = 20_000  # scalars, lists and mappings as written
MAX_YAML_DEPTH = 32  # lists and mappings nested in each other
MAX_YAML_ALIASES = 100  # `*name` references
MAX_SCALAR_CHARS = 16_384  # one value (a launch command, a path)
# After aliases are expanded the document must still be no larger than a file could hold written out:
# what a billion-laughs document exceeds at once.
MAX_EXPANDED_CHARS = MAX_FILE_BYTES

# Names: the gate's name is the first part of every node id ("name::side::cell") and of default file names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_CHARS = 64
MAX_STRING_CHARS = 4_096  # model references, URLs, paths (PATH_MAX on Linux)

# The sweep: what bounds the time, memory and item count of one run before the model loads.
MAX_LENGTH_TOKENS = 1 << 20  # 1,048,576 tokens: a prompt length, or the loss curve's text
MAX_LENGTHS = 64
MAX_DEPTHS = 101
MAX_SEEDS = 1_000
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
MAX_TASKS = 64
MAX_CELLS = 10_000  # tasks x lengths x depths x seeds, per side
MAX_REPEATS = 50
MAX_NEW_TOKENS = 4_096
MAX_CELL_TIMEOUT_S = 86_400.0
MAX_LOSS_BUCKETS = 1_024
MAX_INTEGER = 2**31 - 1  # any other whole number
DEPTH_ID_DECIMALS = 2  # node ids show depths to two decimals (d0.50): depths must differ there
# The load sweep (sweep.load): what bounds the requests one run sends an engine, and for how long.
MAX_LOAD_LEVELS = 16  # concurrency levels
MAX_LOAD_CONCURRENCY = 256  # requests in flight at once
MAX_LOAD_REQUESTS = 1_024  # requests per side and level
MAX_LOAD_TOTAL_REQUESTS = 4_096  # requests per side over all levels
MAX_LOAD_REQUEST_TIMEOUT_S = 3_600.0  # one request, sent to its last token
MAX_LOAD_TIME_BUDGET_S = 86_400.0  # the whole load sweep, both sides; requests not sent by then are errors

class _BoundedRepr(reprlib.Repr):
    """reprlib's repr, which cuts long strings, lists and nested values, and never builds a huge int's digits."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = 6
        self.maxdict = 4
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # str() of a 4301-digit int raises; of a 4300-digit one it is quadratic
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_BOUNDED = _BoundedRepr()


def shown(value: Any) -> str:
    """`repr(value)` cut to about 60 characters, in time bounded whatever `value` is (an error message quotes it)."""
    try:
        return _BOUNDED.repr(value)
    except Exception:  # noqa: BLE001 - a value whose own __repr__ fails still gets a message
        return f"<a {type(value).__name__}>"


def shown_key(key: Any) -> str:
    """A mapping key as a message names it: strings as they are (cut), anything else as its bounded repr."""
    if isinstance(key, str) and key.isprintable():
        return key if len(key) <= 60 else key[:57] + "..."
    return shown(key)
