"""User-facing errors: anything the user can fix gets a one-line message and exit status 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A bad input the user can fix. The CLI prints ``error: <message>`` and exits with status 2."""


class RunFailure(RuntimeError):
    """A run failed for a reason that is not a bad input; the CLI prints ``error: <message>`` and
    exits with status 1."""


class NumericalError(RunFailure):
    """A NaN or infinite loss; the message names task, epoch and iteration. The CLI prints
    ``error: <message>`` and exits with status 1 (a run failure, not a bad input)."""


def choice_error(what: str, value: object, choices: Iterable[object]) -> UserError:
    """Build the standard message: ``unknown <what> 'value'; valid choices: a, b, c``, ending with
    ``(did you mean 'b'?)`` when one choice is close to ``value`` (a typo, another case)."""
    choices = [str(c) for c in choices]
    return UserError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}{did_you_mean(value, choices)}")


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'gd'?)`` for the choice closest to ``value`` (ignoring case), or ''."""
    import difflib

    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def cli_main(main: Callable[..., int] | None = None, *, interrupted: str = "interrupted") -> Callable:
    """Decorate a command's ``main``: a :class:`UserError` prints one line ``error: ...`` on stderr
    and returns exit status 2; a :class:`RunFailure` (a NaN loss, a full disk) does the same with
    status 1; Ctrl-C prints
    ``error: <interrupted>`` and returns 130. Use bare (``@cli_main``) or with a message
    (``@cli_main(interrupted="...")``)."""
    if main is None:
        return functools.partial(cli_main, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except RunFailure as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"error: {interrupted}", file=sys.stderr)
            return 130

    return wrapper
