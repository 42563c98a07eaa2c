"""Expression transfer: another processed clip's expression sequence, ready to drive a trained head.

`jean-render ... --expression-from OTHER_DATASET` calls `load_expression_sequence(OTHER_DATASET, reference)` and
encodes the result with the head's encoder. The other clip's inputs are identity-normalized on their own (relative to
that clip's neutral and face size, see `inputs.py`), so a different person's brow raise becomes "a brow raise", not
"that person's brows"; they are built with the reference's speech low-pass and resampled to the reference fps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.inputs import ExpressionInputs, ExpressionLayout, expression_inputs


def load_expression_sequence(
    other: Union[Path, str, ProcessedClip],
    reference: Union[ExpressionInputs, ExpressionLayout],
    fps: Optional[float] = None,
) -> ExpressionInputs:
    """Expression inputs of the clip `other`, checked against and shaped for the head's `reference` layout.

    Args:
        other: a processed clip folder (or an opened clip) whose expressions drive the head.
        reference: the head's training-clip inputs (layout and fps taken from it) or the encoder's layout
            (`ExpressionCheckpoint.layout`).
        fps: frame rate of the output; default: the reference inputs' fps (required with a bare layout).

    Raises:
        DatasetError: `other` is not a finished processed clip (one line, says how to fix it).
        ExpressionLayoutError: its landmark layout / channels differ from the reference's (e.g. a 68-point
            face-alignment clip driving a head trained on 478-point MediaPipe inputs).

    >>> seq = load_expression_sequence("data/obama_3", model_inputs)  # doctest: +SKIP
    >>> codes = encoder(seq.values)  # [N_other, D]  # doctest: +SKIP
    """
    layout = reference.layout if isinstance(reference, ExpressionInputs) else reference
    if fps is None:
        if not isinstance(reference, ExpressionInputs):
            raise ValueError("load_expression_sequence: pass fps= when the reference is a bare layout")
        fps = reference.fps
    clip = other if isinstance(other, ProcessedClip) else ProcessedClip.open(other)
    inputs = expression_inputs(clip, lowpass_seconds=layout.lowpass_seconds)
    inputs.layout.check_compatible(layout.signature(), what=f"--expression-from {clip.root}")
    return inputs.resampled(fps)


def match_length(
    sequence: Float[Tensor, "num_frames channels"],
    num_frames: int,
    mode: Literal["mirror", "hold", "loop"] = "mirror",
) -> Float[Tensor, "num_target channels"]:
    """Stretch a per-frame sequence (inputs or codes) to `num_frames` rows without resampling time.

    Longer sequences are cut. Shorter ones continue by `mirror` (play backwards, then forwards again: no jump),
    `hold` (repeat the last frame) or `loop` (start over: a jump at each wrap).

    >>> match_length(torch.arange(3.0)[:, None], 7).squeeze(1).tolist()
    [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0]
    """
    n = sequence.shape[0]
    if n == 0:
        raise ValueError("match_length: empty sequence")
    idx = torch.arange(num_frames)
    if mode == "loop":
        idx = idx % n
    elif mode == "hold":
        idx = idx.clamp(max=n - 1)
    elif mode == "mirror":
        period = max(1, 2 * (n - 1))
        idx = idx % period
        idx = torch.where(idx < n, idx, period - idx)
    else:
        raise ValueError(f"match_length: unknown mode {mode!r} (mirror, hold, loop)")
    return sequence[idx.to(sequence.device)]
