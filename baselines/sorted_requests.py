"""Requests kept in key order, for policies whose keys change far less often than they are asked.

Why: LTR ranks by a static score and MLFQ by a level that moves only at a demotion or a
promotion, yet the engine asks for the order every iteration. Sorting thousands of queued
requests each time would dominate an overloaded simulation; keeping them sorted costs one
binary search and one list move per change.
"""

from __future__ import annotations

import bisect
from typing import Any

from envs.live_request import Request


class SortedRequests:
    """Requests sorted by a unique key per request (end the key with the request id to make it so)."""

    __slots__ = ("_keys", "_reqs", "_key_of")

    def __init__(self) -> None:
        self._keys: list[Any] = []
        self._reqs: list[Request] = []
        self._key_of: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._key_of

    def key(self, request_id: int) -> Any:
        return self._key_of[request_id]

    def insert(self, req: Request, key: Any) -> None:
        rid = req.request_id
        if rid in self._key_of:
            raise ValueError(f"request {rid} is already in the sorted list (key {self._key_of[rid]!r})")
        i = bisect.bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self._reqs.insert(i, req)
        self._key_of[rid] = key

    def remove(self, request_id: int) -> None:
        key = self._key_of.pop(request_id)
        i = bisect.bisect_left(self._keys, key)
        del self._keys[i]
        del self._reqs[i]

    def rekey(self, req: Request, key: Any) -> None:
        self.remove(req.request_id)
        self.insert(req, key)

    def requests(self) -> list[Request]:
        """The requests in key order (the internal list: read it, do not keep or modify it)."""
        return self._reqs
