"""Rendering a trained JEAN head with new audio (`jean-render`); see docs/rendering.md.

Modules: `inputs` (the audio track, pose and expression sequences on the output's frame grid), `loading` (a trained
pipeline from its config.yml, a run's or a `jean-export` folder's, with one-line errors), `exported` (reading an
export folder), `cli` (the subcommands and the render loop), `errors`.
"""


def entrypoint() -> None:
    """Console script `jean-render` (imports stay lazy so `--help` and plugin discovery are light)."""
    from jean_nerfstudio.render.cli import entrypoint as _entrypoint

    _entrypoint()
