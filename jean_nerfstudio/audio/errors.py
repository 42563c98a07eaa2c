"""The audio front end's error, below both front ends (`frontend.py` re-exports it; `backbone.py` derives from it), so
that the backbone does not import the front end that loads it."""

from jean_nerfstudio.errors import UserError


class FrontEndError(UserError, ValueError):
    """A front end cannot be built as described (bad backbone, layer out of range). One-line message."""
