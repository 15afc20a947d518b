"""Building GA360 export rows (sessions of hits) for test inputs."""
from __future__ import annotations

from typing import Any, Optional


def session(visitor: Any, visit: Any, hits: Any) -> dict:
    """One GA360 session row: ``fullVisitorId``, ``visitNumber``, ``hits`` as given."""
    return {"fullVisitorId": visitor, "visitNumber": visit, "hits": hits}


def page(time: Any, content: Optional[Any] = None, **extra: Any) -> dict:
    """A PAGE hit at ``time`` with ``content`` in custom dimension 10 (none when None), plus
    any ``extra`` fields."""
    dims = [{"index": 10, "value": content}] if content is not None else []
    return {"time": time, "type": "PAGE", "customDimensions": dims, **extra}
