"""Errors raised on bad user input.

Every public function that checks its input raises :class:`InputError`, a ``ValueError`` whose
message names *where* (file, field or argument), *what was found* and *what was expected*.
"""
from __future__ import annotations

import re


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


_PLAIN = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}")


def plain_name(name: object, where: str, what: str = "name") -> str:
    """``name`` if it is one plain file-name component (letters, digits, ``._+-``, not starting with
    a dot: no ``/``, ``..``, absolute path or drive), else :class:`InputError` at ``where``. Used for
    every name read from a file or the command line that becomes part of a path.

    >>> plain_name("1272-128104-0000", "x")
    '1272-128104-0000'
    >>> plain_name("../x", "transcripts.tsv:3", "utterance id")
    Traceback (most recent call last):
    ...
    lstmkit.errors.InputError: transcripts.tsv:3: found utterance id '../x'; expected letters, digits and ._+- only, not starting with '.' (a name, not a path)
    """
    if not isinstance(name, str) or not _PLAIN.fullmatch(name):
        raise InputError(where, f"found {what} {name!r}", "letters, digits and ._+- only, not starting with '.' (a name, not a path)")
    return name
