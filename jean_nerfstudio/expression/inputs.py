"""Per-frame expression-encoder inputs built from a processed clip.

What goes in, and why (see docs/expression_encoder.md for the measurements behind it):

- *Full rate*: the brow and eye blendshapes, the eye closure, the brow landmark offsets (x, y) and the eyelid
  landmark offsets (y). Blinks and brow flashes are fast, and speech barely moves them.
- *Low-passed* (Gaussian, `lowpass_seconds` ~1 s): the cheek/nose and expressive-mouth blendshapes (smile, frown,
  dimple, puff), the speech blendshapes, and the mouth-corner landmark offsets (the outer-lip landmarks for the
  68-point layout, which has no blendshapes). A held smile or an open mouth survives the filter; phonemes (3-8 Hz) and
  the speech cross-talk of MediaPipe's cheek and smile channels (30-60% of their variance on real clips) do not.
  This is the structural half of the disentanglement; the objective's leak penalty removes what still leaks.
- *Targets that are never inputs*: the high-pass ("phonetic") mouth shape (speech blendshapes, lip landmark offsets,
  lip opening and mouth width), used by the leak penalty and the probes; the upper-face channels at full rate and the
  expressive mouth, used by the probes.

Identity normalization, so that codes transfer across people: every channel is measured relative to the clip's own
neutral, the per-channel median over the clip (landmarks: the median shape), and landmark offsets are divided by the
face size (RMS radius of the median face oval). A persistent expression over a whole clip therefore reads as neutral;
that is the price of comparing a person only with themself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_COUNTS, DatasetError, ProcessedClip
from jean_nerfstudio.errors import UserError

LAYOUT_VERSION = 1
"""Bumped when the meaning of a channel changes; checkpoints of another version are refused."""

DEFAULT_LOWPASS_SECONDS = 1.0
"""Width of the speech-channel low-pass (the Gaussian's sigma is a quarter of it: -3 dB near 0.75 Hz, ~0 at 3 Hz)."""

# Landmark groups fed at full rate (expression) and low-passed (speech), with the axes that carry their motion:
# brows rise and draw together (y, x), lids open and close (y); depth and the other axes hold mostly tracking noise,
# which would otherwise outnumber the signal channels.
_FULL_RATE_GROUPS: Tuple[Tuple[str, str, str], ...] = (
    ("brow_left", "brow", "xy"),
    ("brow_right", "brow", "xy"),
    ("eye_left_lids", "eye", "y"),
    ("eye_right_lids", "eye", "y"),
)
_SLOW_GROUPS_WITH_BLENDSHAPES: Tuple[Tuple[str, str], ...] = (("mouth_corners", "xyz"),)
_SLOW_GROUPS_LANDMARKS_ONLY: Tuple[Tuple[str, str], ...] = (("lips_outer", "xy"),)
_MOUTH_TARGET_GROUPS: Tuple[str, ...] = ("lips_outer", "lips_inner")
_AXES = ("x", "y", "z")

# Expression blendshapes fed at full rate: brows and eyes move fast (blinks, brow flashes) and speech barely moves them.
FULL_RATE_BLENDSHAPES: Tuple[str, ...] = tuple(n for n in C.UPPER_FACE_BLENDSHAPES if n.startswith(("brow", "eye")))
# Expression blendshapes fed low-passed: on real talking clips 30-60% of their variance is predictable from the
# high-pass mouth shape (MediaPipe cross-talk and speech-driven cheek motion), while their expressive part is slow.
SLOW_EXPRESSION_BLENDSHAPES: Tuple[str, ...] = (
    *(n for n in C.UPPER_FACE_BLENDSHAPES if n not in FULL_RATE_BLENDSHAPES),
    *C.EXPRESSIVE_MOUTH_BLENDSHAPES,
)

# Region of each expressive blendshape, used by the objective's channel-group masking and by the viewer controls.
_BLENDSHAPE_REGION: Dict[str, str] = {
    **{n: "brow" for n in C.UPPER_FACE_BLENDSHAPES if n.startswith("brow")},
    **{n: "eye" for n in C.UPPER_FACE_BLENDSHAPES if n.startswith("eye")},
    **{n: "cheek" for n in C.UPPER_FACE_BLENDSHAPES if n.startswith(("cheek", "nose"))},
    **{n: "mouth_expression" for n in C.EXPRESSIVE_MOUTH_BLENDSHAPES},
}


class ExpressionLayoutError(UserError, ValueError):
    """Inputs of one landmark/blendshape layout were given to an encoder built for another."""


@dataclass(frozen=True)
class ExpressionLayout:
    """What each input channel and target column means. Two layouts are compatible when their signatures match."""

    backend: str
    """Landmark backend of the clip (`mediapipe` or `face-alignment`)."""
    num_points: int
    """Landmarks per frame (478 or 68)."""
    channel_names: Tuple[str, ...]
    """Encoder input channels: `bs:NAME`, `blink:SIDE`, `lm:GROUP:POINT:AXIS`, `slow:bs:NAME`, `slow:lm:...`."""
    channel_regions: Tuple[str, ...]
    """Face region of each input channel (brow, eye, cheek, mouth_expression, slow_mouth); masking and controls use it."""
    speech_target_names: Tuple[str, ...]
    """High-pass mouth-shape targets (`hp:...`): what the codes must NOT predict."""
    upper_target_names: Tuple[str, ...]
    """Full-rate upper-face targets: what the codes must predict."""
    expressive_target_names: Tuple[str, ...]
    """Expressive-mouth targets (smile, frown; low-passed as the encoder sees them; empty without blendshapes)."""
    lowpass_seconds: float
    """Low-pass width applied to the speech channels, in seconds."""
    lid_gaps: Tuple[float, ...] = field(default=(), compare=False)
    """Median upper-to-lower eyelid distance of each lid pair, in face sizes (the `blink` control closes this gap).
    Identity-specific, so not part of the signature."""

    @property
    def has_blendshapes(self) -> bool:
        return any(name.startswith("bs:") for name in self.channel_names)

    def signature(self) -> Dict[str, object]:
        """The identity-free description two layouts must share for one encoder to read both."""
        return {
            "layout_version": LAYOUT_VERSION,
            "backend": self.backend,
            "num_points": self.num_points,
            "channel_names": list(self.channel_names),
            "lowpass_seconds": float(self.lowpass_seconds),
        }

    def to_dict(self) -> Dict[str, object]:
        return {
            **self.signature(),
            "channel_regions": list(self.channel_regions),
            "speech_target_names": list(self.speech_target_names),
            "upper_target_names": list(self.upper_target_names),
            "expressive_target_names": list(self.expressive_target_names),
            "lid_gaps": list(self.lid_gaps),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "ExpressionLayout":
        return cls(
            backend=str(values["backend"]),
            num_points=int(values["num_points"]),  # type: ignore[arg-type]
            channel_names=tuple(values["channel_names"]),  # type: ignore[arg-type]
            channel_regions=tuple(values["channel_regions"]),  # type: ignore[arg-type]
            speech_target_names=tuple(values["speech_target_names"]),  # type: ignore[arg-type]
            upper_target_names=tuple(values["upper_target_names"]),  # type: ignore[arg-type]
            expressive_target_names=tuple(values["expressive_target_names"]),  # type: ignore[arg-type]
            lowpass_seconds=float(values["lowpass_seconds"]),  # type: ignore[arg-type]
            lid_gaps=tuple(float(v) for v in values.get("lid_gaps", ())),  # type: ignore[union-attr]
        )

    def check_compatible(self, expected: Mapping[str, object], what: str = "these inputs") -> None:
        """Raise a one-line `ExpressionLayoutError` when `expected` (a signature) differs from this layout's."""
        mine = self.signature()
        if int(expected.get("layout_version", -1)) != LAYOUT_VERSION:  # type: ignore[call-overload]
            raise ExpressionLayoutError(
                f"{what}: expression layout version {expected.get('layout_version')} != {LAYOUT_VERSION} of this "
                "code; retrain the expression encoder (jean-train-expression)."
            )
        if expected.get("backend") != mine["backend"] or expected.get("num_points") != mine["num_points"]:
            raise ExpressionLayoutError(
                f"{what}: landmark layout {mine['backend']} ({mine['num_points']} points) but the expression encoder "
                f"was built for {expected.get('backend')} ({expected.get('num_points')} points); process both clips "
                "with the same `jean-process --landmarks` backend."
            )
        if list(expected.get("channel_names", [])) != mine["channel_names"]:  # type: ignore[call-overload]
            theirs = set(expected.get("channel_names", []))  # type: ignore[call-overload]
            missing = [n for n in mine["channel_names"] if n not in theirs][:3]  # type: ignore[union-attr]
            raise ExpressionLayoutError(
                f"{what}: expression input channels differ from the encoder's ({len(theirs)} vs "
                f"{len(mine['channel_names'])} channels; e.g. {missing or 'same names, other order'}); the clips were "
                "processed with different blendshape settings."
            )
        if abs(float(expected.get("lowpass_seconds", -1.0)) - mine["lowpass_seconds"]) > 1e-6:  # type: ignore[arg-type]
            raise ExpressionLayoutError(
                f"{what}: speech low-pass {mine['lowpass_seconds']} s but the encoder used "
                f"{expected.get('lowpass_seconds')} s; build the inputs with lowpass_seconds="
                f"{expected.get('lowpass_seconds')}."
            )

    def indices(self, names: Sequence[str]) -> List[int]:
        """Input-channel indices of `names` that this layout has (others are skipped)."""
        lookup = {n: i for i, n in enumerate(self.channel_names)}
        return [lookup[n] for n in names if n in lookup]


@dataclass
class ExpressionInputs:
    """One clip's encoder inputs and the targets that measure the codes, on a common frame grid.

    The NeRF model (and `jean-render --expression-from`) uses `values`; training and probes use the targets too.
    """

    values: Float[Tensor, "num_frames num_channels"]
    """Encoder input, raw (un-standardized) units: blendshape deltas, eye closure deltas, landmark offsets in face
    sizes. The encoder standardizes internally, so viewer edits are made in these readable units."""
    speech_targets: Float[Tensor, "num_frames num_speech"]
    """High-pass mouth shape (never an encoder input)."""
    upper_targets: Float[Tensor, "num_frames num_upper"]
    """Full-rate upper-face blendshapes and eye closure (or brow/lid landmark offsets), centred on the clip's neutral."""
    expressive_targets: Float[Tensor, "num_frames num_expressive"]
    """Expressive-mouth blendshapes (smile, frown, dimple, puff), low-passed and centred; [N, 0] without them."""
    layout: ExpressionLayout
    """Channel meanings."""
    fps: float
    """Frame rate of the rows."""
    source: str = ""
    """Where the inputs came from (a dataset folder), for messages."""
    train_frames: Optional[List[int]] = None
    """Frames of the clip's training split (None: all frames), so that training and probes can hold frames out."""

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.values.shape[1])

    def to(self, device: torch.device | str) -> "ExpressionInputs":
        return replace(
            self,
            values=self.values.to(device),
            speech_targets=self.speech_targets.to(device),
            upper_targets=self.upper_targets.to(device),
            expressive_targets=self.expressive_targets.to(device),
        )

    def frames(self, index: slice | Sequence[int] | Tensor) -> "ExpressionInputs":
        """The rows `index` (a contiguous slice keeps the sequence meaningful for the encoder)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            values=self.values[index],
            speech_targets=self.speech_targets[index],
            upper_targets=self.upper_targets[index],
            expressive_targets=self.expressive_targets[index],
            train_frames=None,
        )

    def resampled(self, fps: float) -> "ExpressionInputs":
        """The same sequence at another frame rate (linear interpolation in time; same duration)."""
        if abs(fps - self.fps) < 1e-6:
            return self
        duration = (self.num_frames - 1) / self.fps
        num_out = int(math.floor(duration * fps + 1e-6)) + 1
        src_pos = torch.arange(num_out, dtype=torch.float64) / fps * self.fps
        lo = src_pos.floor().long().clamp(0, self.num_frames - 1)
        hi = (lo + 1).clamp(max=self.num_frames - 1)
        w = (src_pos - lo.double()).float()[:, None]

        def interp(x: Tensor) -> Tensor:
            return x[lo] * (1 - w.to(x)) + x[hi] * w.to(x)

        return replace(
            self,
            values=interp(self.values),
            speech_targets=interp(self.speech_targets),
            upper_targets=interp(self.upper_targets),
            expressive_targets=interp(self.expressive_targets),
            fps=float(fps),
            train_frames=None,
        )


def gaussian_lowpass(
    x: Float[Tensor, "*batch num_frames channels"], fps: float, seconds: float
) -> Float[Tensor, "*batch num_frames channels"]:
    """Low-pass every channel over time with a Gaussian of sigma `seconds / 4` (edges replicated).

    >>> gaussian_lowpass(torch.ones(2, 50, 3), fps=25.0, seconds=1.0).shape
    torch.Size([2, 50, 3])
    """
    if seconds <= 0 or x.shape[-2] < 2:
        return x
    sigma = seconds / 4.0 * fps
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    lead, (n, c) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, n, c).transpose(1, 2).reshape(-1, 1, n)
    # Replicate (not reflect) padding: valid for sequences shorter than the kernel, and a constant stays constant.
    padded = torch.nn.functional.pad(flat, (radius, radius), mode="replicate")
    out = torch.nn.functional.conv1d(padded, kernel)
    return out.reshape(-1, c, n).transpose(1, 2).reshape(*lead, n, c)


def gaussian_highpass(
    x: Float[Tensor, "*batch num_frames channels"], fps: float, seconds: float
) -> Float[Tensor, "*batch num_frames channels"]:
    """`x` minus its `gaussian_lowpass`: the fast (phonetic) part of a signal."""
    return x - gaussian_lowpass(x, fps, seconds)


def _face_size(shape: np.ndarray, groups: Mapping[str, Sequence[int]]) -> float:
    oval = shape[list(groups["face_oval"])]
    size = float(np.sqrt(((oval - oval.mean(0)) ** 2).sum(-1).mean()))
    if not np.isfinite(size) or size <= 1e-8:
        raise DatasetError("landmarks_canonical: degenerate face (zero face-oval radius); re-run `jean-process`.")
    return size


def expression_inputs_from_arrays(
    landmarks: np.ndarray,
    eye_blink: np.ndarray,
    blendshapes: Optional[np.ndarray],
    blendshape_names: Sequence[str],
    backend: str,
    groups: Mapping[str, Sequence[int]],
    fps: float,
    lowpass_seconds: float = DEFAULT_LOWPASS_SECONDS,
    source: str = "",
) -> ExpressionInputs:
    """Build encoder inputs and targets from raw per-frame arrays (the contract's features).

    Args:
        landmarks: [N, L, 3] pose-free canonical landmarks, any length unit.
        eye_blink: [N, 2] eye closure (left, right) in [0, 1].
        blendshapes: [N, B] MediaPipe blendshapes, or None / B = 0 (face-alignment): inputs come from landmarks alone.
        blendshape_names: names of the B columns.
        backend: landmark backend name (recorded in the layout).
        groups: landmark index groups (contract `LANDMARK_GROUPS` layout).
        fps: frame rate.
        lowpass_seconds: speech low-pass width.
        source: a label for messages.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    num_frames, num_points = landmarks.shape[:2]
    if landmarks.ndim != 3 or landmarks.shape[2] != 3:
        raise DatasetError(f"{source}: landmarks_canonical has shape {landmarks.shape}, expected [N, L, 3].")
    expected_points = LANDMARK_COUNTS.get(backend)
    if expected_points is not None and expected_points != num_points:
        raise DatasetError(f"{source}: {num_points} landmarks for backend {backend!r} (expected {expected_points}).")
    if not np.isfinite(landmarks).all():
        raise DatasetError(f"{source}: landmarks_canonical holds NaN/inf; re-run `jean-process` with --force.")
    use_blendshapes = blendshapes is not None and np.asarray(blendshapes).size > 0 and len(blendshape_names) > 0

    neutral_shape = np.median(landmarks, axis=0)
    face = _face_size(neutral_shape, groups)
    offsets = (landmarks - neutral_shape[None]) / face  # [N, L, 3] in face sizes

    def landmark_block(group: str, prefix: str, axes: str = "xyz") -> Tuple[np.ndarray, List[str]]:
        idx = list(groups[group])
        axis_idx = [_AXES.index(a) for a in axes]
        names = [f"{prefix}lm:{group}:{p}:{a}" for p in idx for a in axes]
        return offsets[:, idx][:, :, axis_idx].reshape(num_frames, -1), names

    def centred(x: np.ndarray) -> np.ndarray:
        return x - np.median(x, axis=0, keepdims=True)

    columns: List[np.ndarray] = []
    names: List[str] = []
    regions: List[str] = []

    bs_lookup: Dict[str, np.ndarray] = {}
    if use_blendshapes:
        bs = np.asarray(blendshapes, dtype=np.float64)
        bs_lookup = {n: centred(bs[:, i]) for i, n in enumerate(blendshape_names)}
        for name in FULL_RATE_BLENDSHAPES:
            if name in bs_lookup:
                columns.append(bs_lookup[name][:, None])
                names.append(f"bs:{name}")
                regions.append(_BLENDSHAPE_REGION[name])
    blink = centred(np.asarray(eye_blink, dtype=np.float64).reshape(num_frames, 2))
    columns.append(blink)
    names += ["blink:left", "blink:right"]
    regions += ["eye", "eye"]
    for group, region, axes in _FULL_RATE_GROUPS:
        block, block_names = landmark_block(group, "", axes)
        columns.append(block)
        names += block_names
        regions += [region] * len(block_names)

    # Channels that speech moves enter only low-passed: a held smile survives, phonemes and cross-talk do not.
    slow_cols: List[np.ndarray] = []
    slow_names: List[str] = []
    slow_regions: List[str] = []
    if use_blendshapes:
        for name in (*SLOW_EXPRESSION_BLENDSHAPES, *C.SPEECH_BLENDSHAPES):
            if name in bs_lookup:
                slow_cols.append(bs_lookup[name][:, None])
                slow_names.append(f"slow:bs:{name}")
                slow_regions.append(_BLENDSHAPE_REGION.get(name, "slow_mouth"))
    for group, axes in _SLOW_GROUPS_WITH_BLENDSHAPES if use_blendshapes else _SLOW_GROUPS_LANDMARKS_ONLY:
        block, block_names = landmark_block(group, "slow:", axes)
        slow_cols.append(block)
        slow_names += block_names
        slow_regions += ["slow_mouth"] * len(block_names)
    slow_raw = torch.from_numpy(np.concatenate(slow_cols, axis=1)).float()
    columns.append(gaussian_lowpass(slow_raw, fps, lowpass_seconds).double().numpy())
    names += slow_names
    regions += slow_regions

    # Targets: the high-pass mouth shape (blendshapes, lip landmark offsets, lip opening and mouth width).
    target_cols: List[np.ndarray] = []
    target_names: List[str] = []
    if use_blendshapes:
        for name in C.SPEECH_BLENDSHAPES:
            if name in bs_lookup:
                target_cols.append(bs_lookup[name][:, None])
                target_names.append(f"hp:bs:{name}")
    for group in _MOUTH_TARGET_GROUPS:
        block, block_names = landmark_block(group, "")
        target_cols.append(block)
        target_names += [f"hp:{n}" for n in block_names]
    opening = list(groups["mouth_opening"])
    gaps = landmarks[:, opening[0::2], :] - landmarks[:, opening[1::2], :]
    target_cols.append(np.linalg.norm(gaps, axis=-1) / face)
    target_names += [f"hp:geom:lip_gap:{i}" for i in range(gaps.shape[1])]
    corners = list(groups["mouth_corners"])
    width = np.linalg.norm(landmarks[:, corners[0]] - landmarks[:, corners[1]], axis=-1) / face
    target_cols.append(width[:, None])
    target_names.append("hp:geom:mouth_width")
    speech_full = torch.from_numpy(np.concatenate(target_cols, axis=1)).float()
    speech_targets = gaussian_highpass(speech_full, fps, lowpass_seconds)

    # Probe targets: the upper face at full rate (all upper-face blendshapes, cross-talk-prone cheeks included), and
    # the expressive mouth as the encoder sees it (low-passed). Without blendshapes: brow and lid landmarks.
    values = np.concatenate(columns, axis=1)
    lookup = {n: i for i, n in enumerate(names)}
    if use_blendshapes:
        upper_names = [f"bs:{n}" for n in C.UPPER_FACE_BLENDSHAPES if n in bs_lookup] + ["blink:left", "blink:right"]
        upper = np.concatenate(
            [np.stack([bs_lookup[n.split(":", 1)[1]] for n in upper_names[:-2]], axis=1), blink], axis=1
        )
        expressive_names = [f"slow:bs:{n}" for n in C.EXPRESSIVE_MOUTH_BLENDSHAPES if n in bs_lookup]
    else:
        upper_names = [n for n, r in zip(names, regions) if r in ("brow", "eye")]
        upper = values[:, [lookup[n] for n in upper_names]]
        expressive_names = []
    expressive = values[:, [lookup[n] for n in expressive_names]]

    lid_gaps: List[float] = []
    for side in ("eye_left_lids", "eye_right_lids"):
        lids = list(groups[side])
        for upper_i, lower_i in zip(lids[0::2], lids[1::2]):
            lid_gaps.append(float((neutral_shape[upper_i, 1] - neutral_shape[lower_i, 1]) / face))

    layout = ExpressionLayout(
        backend=backend,
        num_points=int(num_points),
        channel_names=tuple(names),
        channel_regions=tuple(regions),
        speech_target_names=tuple(target_names),
        upper_target_names=tuple(upper_names),
        expressive_target_names=tuple(expressive_names),
        lowpass_seconds=float(lowpass_seconds),
        lid_gaps=tuple(lid_gaps),
    )
    return ExpressionInputs(
        values=torch.from_numpy(values).float(),
        speech_targets=speech_targets,
        upper_targets=torch.from_numpy(upper).float(),
        expressive_targets=torch.from_numpy(expressive).float(),
        layout=layout,
        fps=float(fps),
        source=source,
    )


def expression_inputs(clip: ProcessedClip, lowpass_seconds: float = DEFAULT_LOWPASS_SECONDS) -> ExpressionInputs:
    """The expression-encoder inputs of a processed clip (all frames; `train_frames` is the clip's training split).

    >>> clip = ProcessedClip.open("data/obama_2")  # doctest: +SKIP
    >>> inputs = expression_inputs(clip)  # doctest: +SKIP
    >>> inputs.values.shape, inputs.layout.backend  # doctest: +SKIP
    (torch.Size([750, 147]), 'mediapipe')
    """
    names = clip.blendshape_names
    blendshapes = clip.feature("blendshapes") if names else None
    if blendshapes is not None and blendshapes.shape[1] != len(names):
        raise DatasetError(
            f"{clip.root}: blendshapes.npy has {blendshapes.shape[1]} columns but jean.json names {len(names)}; "
            "re-run `jean-process` with --force."
        )
    inputs = expression_inputs_from_arrays(
        landmarks=clip.feature("landmarks_canonical"),
        eye_blink=clip.feature("eye_blink"),
        blendshapes=blendshapes,
        blendshape_names=names,
        backend=clip.landmark_backend,
        groups=clip.landmark_groups,
        fps=clip.fps,
        lowpass_seconds=lowpass_seconds,
        source=str(clip.root),
    )
    inputs.train_frames = clip.train_indices
    return inputs
