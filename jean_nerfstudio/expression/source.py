"""The expression source of a head: one processed clip's per-frame expression inputs and everything that reads,
trains, edits and replaces them, built by the expression package's one factory.

`build_expression_source(clip, kind, checkpoint)` returns one `ExpressionSource` for either encoder:

- 'transformer' (JEAN's): the banded-attention encoder of `encoder.py`, from scratch or from a `jean-train-expression`
  checkpoint (read once), trained with the head under its self-supervised objective (bound once, to the clip's
  training frames), with the viewer's named edits;
- 'mlp': `FrameMLPExpressionEncoder`, a per-frame MLP of the non-speech channels (the light option and the ablation
  baseline), no objective, no edits.

Another clip's inputs come back as an `ExpressionSequence`, which carries the frame rate they are at: the transformer
reads inputs at the head's fps (its attention window is in seconds, its bands in frames), so another clip is
resampled to it; the per-frame mlp reads them at the other clip's own fps. A player lays the sequence on its output's
frame grid by that fps, whichever it is.

>>> source = build_expression_source(clip, "transformer", checkpoint=None)  # doctest: +SKIP
>>> codes = source.encoder(source.inputs)                                      # [N, D]  # doctest: +SKIP
>>> losses = source.objective(source.encoder, source.inputs, codes=codes)      # doctest: +SKIP
>>> edited = source.editor(source.inputs, {"smile": 0.5})                      # doctest: +SKIP
>>> other = source.sequence_of(ProcessedClip.open(OTHER))    # ExpressionSequence  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.expression.checkpoint import build_expression_encoder, load_expression_encoder
from jean_nerfstudio.expression.controls import EXPRESSION_CONTROLS, apply_controls
from jean_nerfstudio.expression.encoder import ExpressionEncoder, ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionLayoutError, expression_inputs
from jean_nerfstudio.expression.objective import ExpressionObjective, ExpressionObjectiveConfig
from jean_nerfstudio.expression.transfer import load_expression_sequence

ExpressionKind = Literal["transformer", "mlp"]


@dataclass(frozen=True)
class ExpressionSequence:
    """Per-frame expression inputs and the frame rate they are at."""

    values: Float[Tensor, "frames features"]
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])


class FrameMLPExpressionEncoder(nn.Module):
    """The simple expression encoder: each frame's non-speech expression inputs through a small MLP.

    No temporal context; kept as the light option (and the ablation baseline) next to the transformer.

    >>> FrameMLPExpressionEncoder(input_dim=20)(torch.randn(5, 20)).shape
    torch.Size([5, 32])
    """

    def __init__(self, input_dim: int, output_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, output_dim),
        )

    def forward(self, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames out"]:
        return self.net(inputs)


def frame_mlp_inputs(clip: ProcessedClip) -> Float[Tensor, "frames features"]:
    """Per-frame inputs of the 'mlp' encoder: the non-speech blendshapes and eye closure, or (68-point layout, no
    blendshapes) brow/eye/nose landmark offsets from the clip's mean shape."""
    blink = clip.feature("eye_blink").astype(np.float32)
    names = clip.blendshape_names
    if names:
        keep = [i for i, n in enumerate(names) if n not in C.SPEECH_BLENDSHAPES and not n.startswith("_")]
        values = clip.feature("blendshapes")[:, keep].astype(np.float32)
        return torch.from_numpy(np.concatenate([values, blink], axis=1))
    landmarks = clip.feature("landmarks_canonical").astype(np.float32)
    groups = clip.landmark_groups
    index = sorted({i for g in ("brow_left", "brow_right", "eye_left", "eye_right", "nose") for i in groups[g]})
    points = landmarks[:, index]
    offsets = points - points.mean(axis=0, keepdims=True)
    scale = np.linalg.norm(points.mean(axis=0).std(axis=0)) + 1e-6
    return torch.from_numpy(np.concatenate([offsets.reshape(len(points), -1) / scale, blink], axis=1))


class ClipExpressionObjective(nn.Module):
    """The objective bound to one clip's speech targets (a buffer, so it follows the model to its device).

    Called as `(encoder, values)` like a loss on the inputs alone; its parameters (the decoder) must be optimized
    with the encoder.
    """

    def __init__(
        self,
        objective: ExpressionObjective,
        speech_targets: Float[Tensor, "num_frames num_speech"],
        num_frames: Optional[int] = None,
    ) -> None:
        """`num_frames`: use only the clip's first frames (the training split of a clip whose held-out tail must not
        shape training); None uses all."""
        super().__init__()
        self.objective = objective
        self.num_frames = num_frames
        self.register_buffer("speech_targets", speech_targets[:num_frames].clone(), persistent=False)

    def forward(
        self,
        encoder: ExpressionEncoder,
        values: Float[Tensor, "num_frames num_channels"],
        codes: Optional[Float[Tensor, "num_frames code_dim"]] = None,
        audio_embeddings: Optional[Float[Tensor, "num_frames audio_dim"]] = None,
    ) -> Dict[str, Tensor]:
        """Weighted losses (see `ExpressionObjective.forward`); `values` are the clip's (unedited) inputs."""
        n = self.num_frames
        if n is not None:
            values = values[:n]
            codes = None if codes is None else codes[:n]
            audio_embeddings = None if audio_embeddings is None else audio_embeddings[:n]
        return self.objective(encoder, values, self.speech_targets, audio_embeddings=audio_embeddings, codes=codes)


@dataclass
class ExpressionSource:
    """A clip's expression inputs and what reads, trains, edits and replaces them."""

    inputs: Float[Tensor, "frames features"]
    """Encoder inputs of every frame of the clip."""
    fps: float
    """Frame rate of `inputs` (the clip's)."""
    encoder: nn.Module
    """inputs [T, F] -> [T, D] (train mode); has `output_dim`."""
    objective: Optional[ClipExpressionObjective]
    """The encoder's self-supervised objective on the clip's training frames (transformer), or None (mlp)."""
    layout: Dict[str, Any]
    """What the inputs are (kind, landmark backend, channel count, the transformer's layout signature)."""
    context_frames: int
    """Frames on each side of t that the code of frame t depends on (0: per-frame)."""
    trainable: bool
    """True when the encoder starts untrained here (then it must train with the head)."""
    sequence_of: Callable[[ProcessedClip], ExpressionSequence]
    """Another processed clip -> its inputs in this layout, at the fps the encoder reads them at (expression
    transfer). Raises `DatasetError` (one line) when its layout differs."""
    controls: List[str] = field(default_factory=list)
    """Names of the viewer's expression edits available for this layout."""
    editor: Optional[Callable[[Tensor, Mapping[str, float]], Tensor]] = None
    """(inputs [N, F] or [F], {control: amount}) -> edited inputs; None when the layout has no named edits."""


def build_expression_source(
    clip: ProcessedClip,
    kind: ExpressionKind = "transformer",
    checkpoint: Optional[Union[Path, str]] = None,
    encoder_config: Optional[ExpressionEncoderConfig] = None,
    objective_config: Optional[ExpressionObjectiveConfig] = None,
) -> ExpressionSource:
    """The expression source of `clip`.

    Args:
        clip: the processed training clip.
        kind: 'transformer' or 'mlp' (the mlp ignores the other arguments).
        checkpoint: a `jean-train-expression` checkpoint, `shipped` (the packaged one: a clip of another landmark
            layout falls back to training from scratch, with a note on stderr), or None/`none` (from scratch).
        encoder_config, objective_config: settings of a from-scratch encoder / replacement loss weights.
    """
    if kind == "mlp":
        return _frame_mlp_source(clip)
    if kind != "transformer":
        raise ValueError(f"unknown expression encoder {kind!r}; use 'transformer' or 'mlp'")
    from jean_nerfstudio.weights import is_shipped, resolve_checkpoint

    path = resolve_checkpoint(checkpoint, "expression")
    try:
        return _transformer_source(clip, path, encoder_config, objective_config)
    except ExpressionLayoutError as err:
        if not is_shipped(checkpoint):
            raise
        # The shipped encoder reads MediaPipe's layout; a face-alignment clip trains its own from scratch instead.
        print(f"jean: the shipped expression encoder does not fit {clip.root} ({' '.join(str(err).split())}); "
              "training an expression encoder from scratch on this clip.", file=sys.stderr)
        return _transformer_source(clip, None, encoder_config, objective_config)


def _frame_mlp_source(clip: ProcessedClip) -> ExpressionSource:
    inputs = frame_mlp_inputs(clip)
    layout = {"kind": "mlp", "backend": clip.landmark_backend, "num_features": int(inputs.shape[1])}

    def sequence_of(other: ProcessedClip) -> ExpressionSequence:
        _check_backend(other, layout)
        # Per-frame codes have no time scale: the other clip's frames play at its own rate.
        return _checked_width(other, ExpressionSequence(frame_mlp_inputs(other), float(other.fps)), layout)

    return ExpressionSource(
        inputs=inputs,
        fps=float(clip.fps),
        encoder=FrameMLPExpressionEncoder(inputs.shape[1]),
        objective=None,
        layout=layout,
        context_frames=0,
        trainable=True,
        sequence_of=sequence_of,
    )


def _transformer_source(
    clip: ProcessedClip,
    checkpoint: Optional[Path],
    encoder_config: Optional[ExpressionEncoderConfig],
    objective_config: Optional[ExpressionObjectiveConfig],
) -> ExpressionSource:
    loaded = load_expression_encoder(checkpoint) if checkpoint is not None else None
    # Inputs are built with the checkpoint's speech low-pass: the encoder was trained on exactly those channels.
    inputs = expression_inputs(clip) if loaded is None else expression_inputs(clip, lowpass_seconds=loaded.layout.lowpass_seconds)
    encoder, objective = build_expression_encoder(inputs, loaded, encoder_config, objective_config)
    input_layout = inputs.layout
    layout = {"kind": "transformer", "backend": clip.landmark_backend, "num_features": int(inputs.input_dim),
              "signature": input_layout.signature()}

    def editor(values: Tensor, amounts: Mapping[str, float]) -> Tensor:
        return apply_controls(values, amounts, input_layout, encoder.input_std)

    def sequence_of(other: ProcessedClip) -> ExpressionSequence:
        _check_backend(other, layout)
        # The encoder's attention bands are in frames of the head's fps: another clip is resampled to it.
        resampled = load_expression_sequence(other, inputs)
        return _checked_width(other, ExpressionSequence(resampled.values.float(), float(resampled.fps)), layout)

    # Only the training split's frames (when they are a contiguous prefix) feed the objective: nothing of the held-out
    # tail shapes training.
    train_frames = clip.train_indices
    contiguous_prefix = train_frames == list(range(len(train_frames)))
    return ExpressionSource(
        inputs=inputs.values.float(),
        fps=float(inputs.fps),
        encoder=encoder,
        objective=ClipExpressionObjective(objective, inputs.speech_targets.float(),
                                          num_frames=len(train_frames) if contiguous_prefix else None),
        layout=layout,
        context_frames=int(encoder.receptive_radius),
        trainable=loaded is None,
        sequence_of=sequence_of,
        controls=list(EXPRESSION_CONTROLS),
        editor=editor,
    )


def _check_backend(other: ProcessedClip, layout: Mapping[str, Any]) -> None:
    backend = layout.get("backend")
    if other.landmark_backend != backend:
        raise DatasetError(
            f"{other.root}: landmarks from '{other.landmark_backend}', but this model was trained on "
            f"'{backend}' landmarks; re-process it with `jean-process --landmarker {backend}`."
        )


def _checked_width(other: ProcessedClip, sequence: ExpressionSequence, layout: Mapping[str, Any]) -> ExpressionSequence:
    expected = int(layout["num_features"])
    if sequence.values.shape[1] != expected:
        raise DatasetError(
            f"{other.root}: expression inputs have {sequence.values.shape[1]} channels, the model expects "
            f"{expected}; re-process it with the same jean-process settings."
        )
    return sequence


@torch.no_grad()
def codes_for_frames(
    encoder: ExpressionEncoder, values: Float[Tensor, "num_frames num_channels"], frames: Tensor
) -> Float[Tensor, "num_selected code_dim"]:
    """Codes of selected frames, encoding only the windows around them (equal to slicing `encoder(values)`; no grad).

    Useful when rendering single frames of long sequences: the cost is that of the span the frames' windows cover.
    """
    radius = encoder.receptive_radius
    lo = max(0, int(frames.min()) - radius)
    hi = min(values.shape[0], int(frames.max()) + radius + 1)
    return encoder(values[lo:hi])[frames.to(torch.long) - lo]
