"""User errors of `jean-render`, `jean-eval` and `jean-export`: `RenderInputError`, reported like every user error.

A render input error is anything the person running the command can fix by changing an argument or a file: a missing
or unreadable audio file, silent audio, a config of another method, an export with a file missing. The one-line report
and exit status 2 come from `jean_nerfstudio.errors` (`exit_on_user_error` is re-exported here for the commands).
"""

from __future__ import annotations

from jean_nerfstudio.errors import UserError, exit_on_user_error

__all__ = ["RenderInputError", "exit_on_user_error"]


class RenderInputError(UserError, RuntimeError):
    """An argument or input file of `jean-render` / `jean-eval` / `jean-export` cannot be used. The message is one
    line."""
