"""Errors that map to a client-facing status code and a JSON body."""

from __future__ import annotations


class InputError(Exception):
    """A request the server cannot answer because of what the client sent.

    ``status`` is the HTTP status to return, ``code`` a stable machine-readable
    name, ``message`` a sentence a person can act on.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the variant it was meant for."""
