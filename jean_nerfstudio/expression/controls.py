"""Named expression edits (viewer sliders): smile, brow raise, blink, frown, squint, eye wide.

A control edits the encoder's *input*, never the code: each one is a direction in input space (blendshape deltas,
eye-closure deltas and landmark offsets in face sizes), so the edited frame is re-encoded with its temporal context
and lands where the encoder puts real expressions. Amount 1 is a strong but natural expression; negative amounts
move the other way (a negative brow raise lowers the brows). Magnitudes were calibrated on real clips: per unit of
MediaPipe `browInnerUp` the brow landmarks rise ~0.05-0.15 face sizes, a full blink moves the upper lid by the lid
gap, a `mouthSmile` of 0.5 moves the mouth corners ~0.05 face sizes out and up.

Speech-driven channels (the low-passed `slow:` mouth channels) are edited too where an expression moves them (the
mouth corners of a smile or frown); a constant offset passes the low-pass unchanged, so this is consistent with how
those channels were built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from jean_nerfstudio.contract import LANDMARK_GROUPS
from jean_nerfstudio.expression.inputs import ExpressionLayout

DEFAULT_LID_GAP = 0.09
"""Lid gap (face sizes) used when a layout carries none (median over the real clips we measured: 0.05-0.13)."""


@dataclass(frozen=True)
class ExpressionControl:
    """One named edit: what each unit of the slider adds to the encoder input."""

    description: str
    """Shown as the slider's hint."""
    blendshapes: Tuple[Tuple[str, float], ...] = ()
    """(MediaPipe blendshape, delta per unit); applied to its `bs:` or `slow:bs:` channel, whichever the layout has."""
    eye_closure: float = 0.0
    """Delta of both `blink:` channels (0 open .. 1 closed) per unit."""
    brow_up: float = 0.0
    """Brow landmarks' y offset per unit, face sizes."""
    brow_inward: float = 0.0
    """Brow landmarks' move toward the face's midline per unit, face sizes (frowning pulls the brows together)."""
    upper_lid_down: float = 0.0
    """Upper-lid landmarks' downward move per unit, in lid gaps."""
    lower_lid_up: float = 0.0
    """Lower-lid landmarks' upward move per unit, in lid gaps."""
    corner_out: float = 0.0
    """Mouth-corner landmarks' outward move per unit, face sizes."""
    corner_up: float = 0.0
    """Mouth-corner landmarks' upward move per unit, face sizes."""
    corner_back: float = 0.0
    """Mouth-corner landmarks' move into the face (-z) per unit, face sizes (a smile pulls the corners back)."""


EXPRESSION_CONTROLS: Dict[str, ExpressionControl] = {
    "smile": ExpressionControl(
        "smile: mouth corners out and up, cheeks raised",
        blendshapes=(("mouthSmileLeft", 0.5), ("mouthSmileRight", 0.5), ("cheekSquintLeft", 0.15),
                     ("cheekSquintRight", 0.15), ("eyeSquintLeft", 0.1), ("eyeSquintRight", 0.1)),
        corner_out=0.06, corner_up=0.04, corner_back=0.03,
    ),
    "brow_raise": ExpressionControl(
        "raise both brows",
        blendshapes=(("browInnerUp", 0.5), ("browOuterUpLeft", 0.4), ("browOuterUpRight", 0.4)),
        brow_up=0.05,
    ),
    "frown": ExpressionControl(
        "frown: brows down and together, mouth corners down",
        blendshapes=(("browDownLeft", 0.4), ("browDownRight", 0.4), ("mouthFrownLeft", 0.3),
                     ("mouthFrownRight", 0.3)),
        brow_up=-0.03, brow_inward=0.01, corner_up=-0.02,
    ),
    "blink": ExpressionControl(
        "close both eyes",
        blendshapes=(("eyeBlinkLeft", 0.6), ("eyeBlinkRight", 0.6)),
        eye_closure=0.9, upper_lid_down=0.8, lower_lid_up=0.2,
    ),
    "squint": ExpressionControl(
        "squint: lids narrowed, cheeks raised",
        blendshapes=(("eyeSquintLeft", 0.5), ("eyeSquintRight", 0.5), ("cheekSquintLeft", 0.3),
                     ("cheekSquintRight", 0.3)),
        upper_lid_down=0.25, lower_lid_up=0.15,
    ),
    "eye_wide": ExpressionControl(
        "eyes wide open",
        blendshapes=(("eyeWideLeft", 0.4), ("eyeWideRight", 0.4)),
        upper_lid_down=-0.2, brow_up=0.015,
    ),
}
"""The controls, by slider name."""


def _landmark_channels(layout: ExpressionLayout) -> Dict[Tuple[int, str], list]:
    """(point, axis) -> indices of every landmark channel of that point (full-rate or slow)."""
    out: Dict[Tuple[int, str], list] = {}
    for i, name in enumerate(layout.channel_names):
        parts = name.split(":")
        if parts[0] == "slow":
            parts = parts[1:]
        if parts[0] == "lm":
            out.setdefault((int(parts[2]), parts[3]), []).append(i)
    return out


def control_direction(name: str, layout: ExpressionLayout) -> Float[Tensor, "num_channels"]:
    """The input-space direction of one unit of control `name` for `layout` (raw input units).

    >>> # direction = control_direction("smile", inputs.layout)  -> tensor [F]
    """
    if name not in EXPRESSION_CONTROLS:
        raise KeyError(f"unknown expression control {name!r}; known: {', '.join(EXPRESSION_CONTROLS)}")
    control = EXPRESSION_CONTROLS[name]
    direction = torch.zeros(len(layout.channel_names))
    lookup = {n: i for i, n in enumerate(layout.channel_names)}
    for blendshape, delta in control.blendshapes:
        for prefix in ("bs:", "slow:bs:"):
            if prefix + blendshape in lookup:
                direction[lookup[prefix + blendshape]] += delta
    for side in ("left", "right"):
        if f"blink:{side}" in lookup:
            direction[lookup[f"blink:{side}"]] += control.eye_closure

    groups = LANDMARK_GROUPS.get(layout.backend)
    if groups is None:
        return direction
    points = _landmark_channels(layout)

    def move(point: int, axis: str, delta: float) -> None:
        for i in points.get((point, axis), []):
            direction[i] += delta

    # Left/right are the subject's; canonical x points to the subject's left, so "inward" is -x on the left.
    for group, inward_sign in (("brow_left", -1.0), ("brow_right", 1.0)):
        for p in groups[group]:
            move(p, "y", control.brow_up)
            move(p, "x", inward_sign * control.brow_inward)
    gaps = list(layout.lid_gaps)
    for side_index, group in enumerate(("eye_left_lids", "eye_right_lids")):
        lids = groups[group]
        for pair, (upper, lower) in enumerate(zip(lids[0::2], lids[1::2])):
            k = side_index * (len(lids) // 2) + pair
            gap = gaps[k] if k < len(gaps) and gaps[k] > 0 else DEFAULT_LID_GAP
            move(upper, "y", -control.upper_lid_down * gap)
            move(lower, "y", control.lower_lid_up * gap)
    # The contract lists mouth corners as (subject's right, subject's left).
    right_corner, left_corner = groups["mouth_corners"][:2]
    for point, out_sign in ((right_corner, -1.0), (left_corner, 1.0)):
        move(point, "x", out_sign * control.corner_out)
        move(point, "y", control.corner_up)
        move(point, "z", -control.corner_back)
    return direction


def apply_controls(
    values: Float[Tensor, "*batch num_channels"],
    amounts: Mapping[str, float],
    layout: ExpressionLayout,
    channel_std: Optional[Float[Tensor, "num_channels"]] = None,
    max_std: float = 3.0,
) -> Float[Tensor, "*batch num_channels"]:
    """Edited encoder inputs: `values + sum(amount * direction)`, for one frame [F] or a sequence [N, F].

    Args:
        values: raw encoder inputs (`ExpressionInputs.values` or rows of it).
        amounts: control name -> amount (viewer sliders, typically in [-1, 1]; 0 = unchanged).
        layout: the inputs' layout (`ExpressionInputs.layout`).
        channel_std: the encoder's training spread per channel (`encoder.input_std`). When given, the summed edit of
            each channel is limited to `max_std` of it, so an edit stays where the encoder has seen data: a channel
            that never moved in training (MediaPipe's `cheekSquint*` and `noseSneer*` are 0 on every real clip we
            processed) is not edited at all, and rare ones (`mouthFrown*`, `eyeWide*`) only within their range.
            Pass it whenever an encoder is at hand (the viewer does).
        max_std: the limit, in training standard deviations.

    >>> edited = apply_controls(inputs.values, {"smile": 0.7}, inputs.layout, encoder.input_std)  # doctest: +SKIP
    """
    if values.shape[-1] != len(layout.channel_names):
        raise ValueError(f"inputs have {values.shape[-1]} channels, the layout {len(layout.channel_names)}")
    delta = torch.zeros(values.shape[-1], dtype=values.dtype, device=values.device)
    for name, amount in amounts.items():
        if name not in EXPRESSION_CONTROLS:
            raise KeyError(f"unknown expression control {name!r}; known: {', '.join(EXPRESSION_CONTROLS)}")
        if amount:
            delta = delta + float(amount) * control_direction(name, layout).to(values)
    if channel_std is not None:
        limit = max_std * channel_std.to(values)
        delta = torch.maximum(torch.minimum(delta, limit), -limit)
    return values + delta


@torch.no_grad()
def control_effects(
    encoder: torch.nn.Module,
    objective: torch.nn.Module,
    values: Float[Tensor, "num_frames num_channels"],
    layout: ExpressionLayout,
    amount: float = 1.0,
) -> Dict[str, Dict[str, float]]:
    """How far each control moves the codes, and what the objective's decoder reads back from the moved codes.

    For each control, over all frames of `values`: `code_shift` = mean |code(edited) - code(original)| relative to the
    codes' temporal std (1.0 = as far as a typical frame-to-mean expression change), and for each blendshape the
    control drives, the decoded change in raw units next to the applied one (`decoded:NAME` vs `requested:NAME`,
    after the encoder's `input_std` limit of `apply_controls`).
    """
    was_training = encoder.training, objective.training
    encoder.eval()
    objective.eval()
    codes = encoder(values)
    code_std = codes.std(0).mean().clamp_min(1e-8)
    decoded = objective.decode(codes) * encoder.input_scale + encoder.input_center
    lookup = {n: i for i, n in enumerate(layout.channel_names)}
    report: Dict[str, Dict[str, float]] = {}
    # Frames edited one control at a time; the code shift is in units of the codes' own temporal spread.
    for name, control in EXPRESSION_CONTROLS.items():
        edited = apply_controls(values, {name: amount}, layout, encoder.input_std)
        applied = (edited - values).mean(0)
        edited_codes = encoder(edited)
        entry = {"code_shift": float((edited_codes - codes).abs().mean() / code_std)}
        edited_decoded = objective.decode(edited_codes) * encoder.input_scale + encoder.input_center
        for blendshape, _ in control.blendshapes:
            for prefix in ("bs:", "slow:bs:"):
                if prefix + blendshape in lookup:
                    i = lookup[prefix + blendshape]
                    entry[f"requested:{blendshape}"] = float(applied[i])
                    entry[f"decoded:{blendshape}"] = float((edited_decoded[:, i] - decoded[:, i]).mean())
        report[name] = entry
    encoder.train(was_training[0])
    objective.train(was_training[1])
    return report
