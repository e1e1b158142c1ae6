"""Text a user or a model supplied (gate and task names, model references, answers, reasons that quote them)
made inert where summaries show it: one line in a terminal, plain text or a code span in Markdown."""

from __future__ import annotations

import re
import unicodedata

# Bidirectional overrides and isolates reorder what a reader sees ("Trojan Source"): shown, never applied.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Markdown punctuation that opens or closes inline syntax mid-line: emphasis, code, tables, strikethrough, and the
# `](` of a link or image (brackets alone, as in a CI "[0.1, 0.2]", link nothing: there are no reference definitions).
_INLINE = re.compile(r"([\\`*|~]|\](?=\())")
# `_` opens or closes emphasis only at a word's edge; inside a word (max_position_embeddings) it is inert.
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# What starts a block when it starts the text and a space follows: a heading, a list item, a numbered item.
_BLOCK_START = re.compile(r"^(#{1,6}|[-+]|\d{1,9}[.)])(?= |$)")


def one_line(text: str, *, collapse: bool = True) -> str:
    """`text` on one line: line breaks, tabs and other control characters become spaces, bidirectional
    controls become U+FFFD; with `collapse`, runs of spaces become one and the ends are trimmed."""
    out = []
    for char in str(text):
        if char in _BIDI:
            out.append("\ufffd")
        elif unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(char)
    joined = "".join(out)
    return " ".join(joined.split()) if collapse else joined


def md_escape(text: str) -> str:
    """Text safe as Markdown prose or a table cell: one line, no raw HTML (`&`, `<`, `>` as entities), no column
    breaks, and no punctuation that could start emphasis, code, a link or a block."""
    text = one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _INLINE.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    return _BLOCK_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], text)


def md_code(text: str) -> str:
    """`text` as an inline code span that shows it literally: on one line, fenced by one backtick more than its
    longest run of backticks (CommonMark), so nothing inside can close it; HTML in a code span is not HTML."""
    text = one_line(text)
    if not text:
        return "` `"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    # A span that starts or ends with a backtick needs a space between it and the fence (stripped when shown).
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
