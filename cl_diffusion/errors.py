"""User-facing errors: anything the user can fix gets a one-line message and exit status 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A bad input the user can fix. The CLI prints ``error: <message>`` and exits with status 2."""


def choice_error(what: str, value: object, choices: Iterable[object]) -> UserError:
    """Build the standard message: ``unknown <what> 'value'; valid choices: a, b, c``."""
    listed = ", ".join(str(c) for c in choices)
    return UserError(f"unknown {what} {value!r}; valid choices: {listed}")


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command's ``main``: a :class:`UserError` prints one line ``error: ...`` on stderr
    and returns exit status 2; Ctrl-C prints one line and returns 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return wrapper
