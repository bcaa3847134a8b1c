"""Stream names as folder names and subject tokens: readable, and never two streams in one place.

A name made only of characters the target allows is kept as it is (``public.orders`` stays
``public.orders``, so existing folders and subjects do not move). Any other name gets the
allowed characters with each other one replaced by ``_``, plus ``~`` and the first 8 hex
digits of the SHA-256 of the original name (``a b`` → ``a_b~c8687a08``): two names that
sanitise alike (``a b`` and ``a_b``, ``Ünï`` and ``_n_``) never share a folder or subject.
``~`` is never among the kept characters, so a suffixed name cannot equal a kept one.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["readable_unique"]


def readable_unique(name: str, bad: re.Pattern[str], *, lead_dot: bool = False) -> str:
    """``name`` itself when no character matches ``bad`` (and it is not empty, nor starts with
    ``.`` when ``lead_dot`` forbids a hidden name), else its sanitised form with a hash suffix."""
    if name and not bad.search(name) and not (lead_dot and name.startswith(".")):
        return name
    readable = bad.sub("_", name)
    if lead_dot:
        readable = readable.lstrip(".")
    return f"{readable or '_'}~{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
