"""User-facing errors: anything the user can fix gets a one-line message and exit status 2."""
from __future__ import annotations

from typing import Iterable


class UserError(Exception):
    """A bad input the user can fix. The CLI prints ``error: <message>`` and exits with status 2."""


def choice_error(what: str, value: object, choices: Iterable[object]) -> UserError:
    """Build the standard message: ``unknown <what> 'value'; valid choices: a, b, c``."""
    listed = ", ".join(str(c) for c in choices)
    return UserError(f"unknown {what} {value!r}; valid choices: {listed}")
