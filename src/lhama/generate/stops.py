"""Stop strings on streamed text: emit what is safe, hold back what might start a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Feed text deltas; get back the text that can be shown and whether a stop string matched.

    A suffix of the output that is a prefix of some stop string is held back until it is either
    completed (then cut away with the rest) or ruled out (then released).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped_by: str | None = None

    def feed(self, delta: str) -> str:
        if self.stopped_by is not None:
            return ""
        if not self.stops:
            return delta
        text = self._pending + delta
        hit, where = None, len(text)
        for s in self.stops:
            i = text.find(s)
            if i != -1 and i < where:
                hit, where = s, i
        if hit is not None:
            self.stopped_by = hit
            self._pending = ""
            return text[:where]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation a held-back partial match is ordinary text."""
        out, self._pending = self._pending, ""
        return "" if self.stopped_by is not None else out
