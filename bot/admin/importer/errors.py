"""The error that rejects a community (or duty) file: ``file:line: reason``."""

from __future__ import annotations


class CommunityFileError(Exception):
    """A community file was rejected; ``str()`` reads ``file:line: reason``."""

    def __init__(self, message: str, line: int | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.file = file

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"
