"""User errors of `jean-render` and `jean-eval`: one red line on stderr and exit status 2, never a traceback.

A user error is anything the person running the command can fix by changing an argument or a file: a missing or
unreadable audio file, silent audio, a config of another method, a dataset of another landmark layout. Bugs still
raise with their traceback.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Tuple, Type


class RenderInputError(RuntimeError):
    """An argument or input file of `jean-render` / `jean-eval` cannot be used. The message is one line."""


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """Every exception type that means "bad input" across the package (imported lazily: some modules are heavy)."""
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.audio.checkpoint import AudioCheckpointError
    from jean_nerfstudio.audio.frontend import FrontEndError
    from jean_nerfstudio.audio.io import AudioInputError
    from jean_nerfstudio.contract import DatasetError

    types: Tuple[Type[BaseException], ...] = (
        RenderInputError,
        AudioInputError,
        DatasetError,
        ModelFileError,
        AudioCheckpointError,
        FrontEndError,
    )
    try:
        from jean_nerfstudio.expression.inputs import ExpressionLayoutError

        types += (ExpressionLayoutError,)
    except ImportError:  # the expression package is optional for rendering with the 'mlp' encoder
        pass
    return types


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def exit_on_user_error(command: str) -> Iterator[None]:
    """Turn user errors raised inside the block into `command: error: ...` (red, stderr) and `sys.exit(2)`."""
    from rich.console import Console
    from rich.markup import escape

    try:
        yield
    except user_error_types() as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{command}: error:[/bold red] {escape(one_line(err))}",
                                                   highlight=False)
        sys.exit(2)
