"""The one error type of :mod:`concerto_ros.recordings`.

Every reader turns what goes wrong with a file (missing, unreadable, unknown format, bad
content) into a :class:`RecordingError` whose message is one line naming the path and the
reason, so command-line tools print ``error: <message>`` instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RecordingError", "SourceError"]


class RecordingError(ValueError):
    """A recording cannot be read: ``"<path>: <reason>"`` on one line.

    Attributes:
        path: the file or folder concerned (``None`` when the problem is not a file's).
        reason: what is wrong and, where possible, how to fix it.
    """

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(self.reason if path is None else f"{path}: {self.reason}")


class SourceError(RecordingError):
    """A recording source description (``--data``, ``data.sources``) is invalid."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)
