"""Errors raised on bad user input.

Every public function that checks its input raises :class:`InputError`, a ``ValueError`` whose
message names *where* (file, field or argument), *what was found* and *what was expected*.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, a config field or an argument that cannot be used.

    Example:
        >>> raise InputError("corpus.txt", "the file is empty", "at least one word")
        Traceback (most recent call last):
        ...
        lstmkit.errors.InputError: corpus.txt: the file is empty; expected at least one word
    """

    def __init__(self, where: str, found: str, expected: str | None = None):
        self.where, self.found, self.expected = str(where), found, expected
        msg = f"{where}: {found}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)
