"""The one error type of `jean-process`: a bad input or an unusable environment, explained in one line.

The CLI prints a `ProcessError` as a single red line (no traceback; `jean_nerfstudio.errors`) and exits with status
2; anything else is a bug and keeps its traceback. Messages name the file, the cause and the fix, e.g.
`clip.mp4: has no audio track; jean-process needs the speech that goes with the face, give a video with sound.`
"""

from __future__ import annotations

from jean_nerfstudio.errors import EXIT_CODE, UserError

__all__ = ["EXIT_CODE", "ProcessError"]


class ProcessError(UserError, RuntimeError):
    """A processing run cannot go on; `str(err)` is one line that names the file, the cause and the fix."""

    def __init__(self, message: str) -> None:
        # Collapse accidental newlines: the CLI promises exactly one line.
        super().__init__(" ".join(str(message).split()))
