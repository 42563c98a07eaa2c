"""User errors: one red line on stderr that names the file, the cause and the fix, and exit status 2; never a traceback.

A user error is anything the person running a command can fix by changing an argument or a file: a missing video, a
dataset of another contract version, silent audio, a checkpoint of another kind. Every such error class of the package
derives from `UserError` (and keeps its historical builtin base, so `except ValueError` around a decoder still works);
bugs raise anything else and keep their traceback.

Every command reports them the same way, through one helper:

    jean-render: error: speech.wav: the audio is silent; give a recording of speech.

>>> with exit_on_user_error("jean-example"):  # doctest: +SKIP
...     raise UserError("clip.mp4: has no audio track; give a video with sound.")
jean-example: error: clip.mp4: has no audio track; give a video with sound.     (stderr, then SystemExit(2))

Code that nerfstudio's own commands run (the `jean-data` dataparser under `ns-train` and `ns-viewer`) cannot wrap
them in that block; it calls `exit_or_raise`, which raises inside one of our commands (so the command prints its own
line) and otherwise prints the line under the running program's name and exits.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, NoReturn, Optional, Tuple, Type, Union

if TYPE_CHECKING:  # rich is imported lazily: this module sits under every other one
    from rich.console import Console

EXIT_CODE = 2
"""Exit status of every command on a user error (argparse and tyro use 2 for bad usage too)."""


class UserError(Exception):
    """Bad input that the user can fix; `str(err)` names the file, the cause and the fix (printed on one line)."""


_ACTIVE: List[str] = []
"""Commands whose `exit_on_user_error` block is running (innermost last)."""


def one_line(err: Union[BaseException, str]) -> str:
    """The message on one line (whitespace runs, newlines included, collapse to one space); the error's type name
    when the message is empty."""
    text = " ".join(str(err).split())
    if not text and isinstance(err, BaseException):
        return type(err).__name__
    return text


def program_name() -> str:
    """The running program's name for an error line (`ns-train`, `ns-viewer`, ...), `jean` when there is none."""
    first = sys.argv[0] if sys.argv else ""
    name = Path(first).name
    if not name or name in ("-c", "-m", "__main__.py") or name.endswith(".py"):
        return "jean"
    return name


def print_user_error(command: str, err: Union[BaseException, str], console: Optional["Console"] = None) -> int:
    """Print `command: error: message` in red on one line (stderr unless `console` is given); returns `EXIT_CODE`.

    For commands whose `main` returns its status instead of exiting (tests call them with their own console)."""
    from rich.console import Console
    from rich.markup import escape

    console = console if console is not None else Console(stderr=True)
    console.print(f"[bold red]{escape(command)}: error:[/bold red] {escape(one_line(err))}", soft_wrap=True,
                  highlight=False)
    return EXIT_CODE


def exit_with(command: str, err: Union[BaseException, str], console: Optional["Console"] = None) -> NoReturn:
    """Print the one red line and exit with status 2."""
    print_user_error(command, err, console)
    sys.exit(EXIT_CODE)


@contextlib.contextmanager
def exit_on_user_error(
    command: str, console: Optional["Console"] = None, also: Tuple[Type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn a `UserError` (or one of `also`, e.g. `OSError` for a command whose every file error is the user's)
    raised inside the block into one red line naming `command`, and exit status 2."""
    _ACTIVE.append(command)
    try:
        yield
    except (UserError, *also) as err:
        exit_with(command, err, console)
    finally:
        _ACTIVE.pop()


def exit_or_raise(err: UserError) -> NoReturn:
    """For code that runs under our commands and under nerfstudio's alike: inside an `exit_on_user_error` block,
    raise `err` (that command prints it); elsewhere (`ns-train`, `ns-viewer`) print it under the program's name and
    exit with status 2."""
    if _ACTIVE:
        raise err
    exit_with(program_name(), err)
