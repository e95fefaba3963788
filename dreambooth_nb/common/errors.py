"""Errors a user can fix: shown as their message alone, without a stack trace, in a notebook and on the command line."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in a setting, a file or the environment; the message names it and says what to do.

    IPython calls _render_traceback_ instead of printing the stack, so a notebook shows the message only.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {line}" if i == 0 else line
                for i, line in enumerate(str(self).splitlines() or [""])]


class InputError(UserError, ValueError):
    """A value that cannot work (a setting, an argument, a file's contents); the message says which and what to do."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that is not there, or not what was expected; the message says what to give instead."""
