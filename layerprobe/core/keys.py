"""Content keys: one :func:`digest` for every cache key and fingerprint the package writes (the config's hash, the
stages' fingerprints, the attribution cache), so that each is one SHA-256 of one canonical text."""

from __future__ import annotations

import dataclasses
import hashlib
import json


def digest(obj, length: int | None = 16, ensure_ascii: bool = False) -> str:
    """The SHA-256 hex digest (its first ``length`` characters; None: all 64) of ``obj``: a str as its UTF-8 text,
    anything else as JSON with sorted keys (dataclasses as dicts, other non-JSON values as ``str()``).
    ``ensure_ascii=True`` escapes non-ASCII characters first, as keys written before this function existed did."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=ensure_ascii, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
