"""Character checks both read-only query guards share.

A guard reads a query the way the engine will, so any character the two could read differently is
refused rather than interpreted: control characters (a C parser may stop at NUL, a terminal may
hide what follows), and, outside string literals, non-ASCII look-alikes of the characters that give
a query its structure (a fullwidth `｜` is a pipe to anything that NFKC-normalises its input).
Inside string literals any character is data and stays allowed.
"""

from __future__ import annotations

import unicodedata

from siemcrew.connectors.base import QueryRefused

ALLOWED_CONTROLS = frozenset("\t\n\r")


def refuse_control_characters(text: str, label: str) -> None:
    """Refuse C0/C1 control characters other than tab and line breaks, wherever they are."""
    for offset, char in enumerate(text):
        if char not in ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            raise QueryRefused(
                f"{label} refused: control character U+{ord(char):04X} at offset {offset} "
                "(an engine may read the text around it differently)"
            )


def refuse_lookalike(char: str, structural: str, label: str, offset: int) -> None:
    """Refuse a non-ASCII character (outside a string) that normalises to a structural one."""
    if char.isascii():
        return
    hit = next((c for c in unicodedata.normalize("NFKC", char) if c in structural), None)
    if hit is not None:
        raise QueryRefused(
            f"{label} refused: {char!r} (U+{ord(char):04X}) at offset {offset} is a look-alike of {hit!r} "
            "outside a string literal"
        )
