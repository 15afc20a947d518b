"""Validation of raw visitor and content IDs.

Vocabulary files are line-based (line i = raw ID of dense ID i), and batch predictions are
``visitorId<TAB>contentId<TAB>...``: an ID holding a line break, a tab or any other control
character would corrupt both, so such IDs are rejected (and counted by the caller).
Non-ASCII text is fine (files are UTF-8); leading or trailing spaces are kept as they are.
"""
from __future__ import annotations

import unicodedata
from typing import Any, Optional, Tuple

MISSING = "missing"
INVALID_CHARACTERS = "invalid_characters"

# Characters str.splitlines() treats as line breaks on top of the Cc category.
_LINE_SEPARATORS = frozenset("\u2028\u2029")


def clean_id(value: Any) -> Tuple[Optional[str], Optional[str]]:
    """Returns ``(id, None)`` for a usable ID, else ``(None, reason)``.

    Integers are accepted and turned into their decimal text (BigQuery JSON exports and
    hand-made files disagree on whether IDs are quoted); booleans, floats and containers
    are not IDs.
    """
    if type(value) is str and value.isprintable() and value.strip():  # the common case, first
        return value, None
    if value is None:
        return None, MISSING
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, INVALID_CHARACTERS
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return None, MISSING
    if not text.isprintable() and _has_control_character(text):
        return None, INVALID_CHARACTERS
    return text, None


def _has_control_character(text: str) -> bool:
    return any(
        unicodedata.category(ch) in ("Cc", "Cs") or ch in _LINE_SEPARATORS for ch in text
    )
