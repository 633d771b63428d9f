"""How deep a JSON body nests, measured on the raw bytes before anything parses it.

Python's json module, pydantic, copy.deepcopy, repr and FastAPI's response encoder all
recurse, so 1000 levels of `[[[...]]]` end as a RecursionError somewhere (a 500) or as
FastAPI's bare "error parsing the body". No AUTOMATIC1111 request nests deeper than about
six levels (alwayson_scripts.controlnet.args[0].image...), so a body deeper than
MAX_JSON_DEPTH is refused up front with a 422 naming `body`.
"""
from __future__ import annotations

import re

MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text opens more than `limit` arrays/objects inside each other.

    Cheap on ordinary bodies: a body with at most `limit` opening brackets (base64 images
    have none) is never scanned. Brackets inside strings do not count.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b'""', body).translate(None, _NOT_BRACKET)
    if not brackets:
        return False
    import numpy as np  # only for bodies with many brackets; keeps this module light to import

    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max()) > limit
