"""jean_nerfstudio: JEAN (Joint Expression and Audio-guided NeRF) talking heads as a nerfstudio plugin."""

__version__ = "0.1.0"


def _allow_numpy_scalars_in_checkpoints() -> None:
    """torch >= 2.6 loads checkpoints with `weights_only=True`; nerfstudio's hold numpy scalars (e.g. the step).

    Every entry point of this package imports it, so loading a jean checkpoint (ns-viewer, ns-render, jean-render,
    resuming ns-train) works without turning the safety check off.
    """
    try:
        import numpy as np
        import torch

        allowed = [np.dtype, np.core.multiarray.scalar]
        allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
        torch.serialization.add_safe_globals(allowed)
    except Exception:  # noqa: BLE001 - an older torch without the allow-list needs nothing here
        pass


_allow_numpy_scalars_in_checkpoints()
