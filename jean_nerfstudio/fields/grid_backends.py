"""Which hash-grid backend runs: `auto` | `tcnn` | `triton` | `torch`, decided once per process and device type.

All three compute the same encoding on the same parameter layout (`fields/hash_grid.py`), so the choice changes speed,
never the checkpoint. On CUDA, `auto` prefers tinycudann only when its self-check passed (`fields/tcnn_probe.py`: a
crash there cannot take the training run down), else the Triton kernels (`fields/triton_grid.py`, no compiler needed),
else the PyTorch grid. On a CPU every choice runs the PyTorch grid (Triton's interpreter, used by the tests, is the one
exception). A choice that cannot be honoured falls back along the same chain with one printed line saying why.
"""

from __future__ import annotations

import sys
from typing import Dict, Literal, Optional, Tuple

import torch

Implementation = Literal["auto", "tcnn", "triton", "torch"]

_decisions: Dict[Tuple[str, str], str] = {}


def resolve_implementation(requested: Implementation, device: Optional[torch.device | str] = None) -> str:
    """The backend that runs for `requested` on `device` (default: CUDA when torch sees it), memoized per process."""
    if device is not None:
        device_type = torch.device(device).type
    else:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    key = (requested, device_type)
    if key not in _decisions:
        choice, note = choose_implementation(requested, device_type)
        if note:
            print(f"jean_nerfstudio: {note}", file=sys.stderr)
        _decisions[key] = choice
    return _decisions[key]


def choose_implementation(requested: Implementation, device_type: str) -> Tuple[str, Optional[str]]:
    """(backend, a one-line note when the request was not honoured as asked, else None)."""
    if requested not in ("auto", "tcnn", "triton", "torch"):
        raise ValueError(f"unknown hash grid implementation {requested!r}; use auto, tcnn, triton or torch")
    if requested == "torch" or (requested == "auto" and device_type != "cuda"):
        return "torch", None
    # Imported only when a fast backend is in question (importing Triton costs a moment; CPU runs never need it).
    from jean_nerfstudio.fields import triton_grid
    from jean_nerfstudio.fields.tcnn_probe import RECHECK_COMMAND, check_tcnn, tcnn_installed

    if device_type != "cuda":
        if requested == "triton" and triton_grid.runs_on(device_type):  # TRITON_INTERPRET=1 (tests)
            return "triton", None
        return "torch", f"implementation={requested!r} needs CUDA; using the torch hash grid."

    fallback = "triton" if triton_grid.runs_on("cuda") else "torch"
    if requested == "triton":
        return fallback, (None if fallback == "triton" else "Triton is not importable; using the torch hash grid.")
    if not tcnn_installed():
        note = None if requested == "auto" else f"tinycudann is not installed; using the {fallback} hash grid."
        return fallback, note
    result = check_tcnn("cuda")
    if result.passed:
        return "tcnn", None
    return fallback, (
        f"tinycudann failed its self-check ({result.reason}); using the {fallback} hash grid. "
        f"After fixing tinycudann, re-check with `{RECHECK_COMMAND}` (or delete {result.cache_file})."
    )
