"""Everything the NeRF model needs from the expression pathway for one training clip, in one call.

`ns-train jean` (the model's `sources.build_expression_source`) and `jean-render --expression-from` use this instead of
wiring the pieces themselves:

    parts = expression_model_parts(clip, checkpoint=None or "expression.ckpt")
    codes = parts.encoder(parts.inputs)                         # [N, D] per frame
    loss_dict.update(parts.objective(parts.encoder, parts.inputs, codes=codes))   # every training step
    edited = parts.editor(parts.inputs, {"smile": 0.5})         # viewer sliders
    other = parts.input_builder(ProcessedClip.open(OTHER))      # --expression-from OTHER: [N_other, F]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.checkpoint import build_expression_encoder
from jean_nerfstudio.expression.controls import EXPRESSION_CONTROLS, apply_controls
from jean_nerfstudio.expression.encoder import ExpressionEncoder, ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionInputs, expression_inputs
from jean_nerfstudio.expression.objective import ExpressionObjective, ExpressionObjectiveConfig
from jean_nerfstudio.expression.transfer import load_expression_sequence


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
class ExpressionModelParts:
    """The training clip's expression inputs and what reads, trains, edits and replaces them."""

    inputs: Float[Tensor, "num_frames num_channels"]
    """Encoder inputs of every frame of the clip."""
    encoder: ExpressionEncoder
    """Train mode; `encoder.output_dim` is the code size."""
    objective: ClipExpressionObjective
    """Self-supervised losses on this clip, called `(encoder, inputs, codes=None)`."""
    controls: List[str]
    """Viewer slider names (`EXPRESSION_CONTROLS`), amounts typically in [-1, 1]."""
    layout: Dict[str, Any]
    """The input layout (`ExpressionLayout.to_dict()`); another clip must match its signature."""
    context_frames: int
    """Frames on each side of t that the code of frame t depends on."""
    trainable: bool
    """True when the encoder starts untrained (no checkpoint): then it must train with the head."""
    editor: Callable[[Tensor, Mapping[str, float]], Tensor]
    """(inputs [N, F] or [F], {control: amount}) -> edited inputs, limited to the encoder's training spread."""
    input_builder: Callable[[ProcessedClip], Tensor]
    """Another processed clip -> its inputs [N_other, F] at this clip's fps (layout checked; one-line errors)."""
    expression_inputs: ExpressionInputs
    """The full `ExpressionInputs` (targets, layout object, fps) for callers that need more than the tensor."""


def expression_model_parts(
    clip: ProcessedClip,
    checkpoint: Optional[Path | str] = None,
    encoder_config: Optional[ExpressionEncoderConfig] = None,
    objective_config: Optional[ExpressionObjectiveConfig] = None,
) -> ExpressionModelParts:
    """Build the expression pathway of the model for `clip`: from a `jean-train-expression` checkpoint, or fresh."""
    lowpass = None
    if checkpoint is not None:
        from jean_nerfstudio.expression.checkpoint import load_expression_encoder

        lowpass = load_expression_encoder(checkpoint).layout.lowpass_seconds
    inputs = expression_inputs(clip) if lowpass is None else expression_inputs(clip, lowpass_seconds=lowpass)
    encoder, objective = build_expression_encoder(inputs, checkpoint, encoder_config, objective_config)
    layout = inputs.layout

    def editor(values: Tensor, amounts: Mapping[str, float]) -> Tensor:
        return apply_controls(values, amounts, layout, encoder.input_std)

    def input_builder(other: ProcessedClip) -> Tensor:
        return load_expression_sequence(other, inputs).values

    return ExpressionModelParts(
        inputs=inputs.values,
        encoder=encoder,
        objective=ClipExpressionObjective(objective, inputs.speech_targets),
        controls=list(EXPRESSION_CONTROLS),
        layout=layout.to_dict(),
        context_frames=encoder.receptive_radius,
        trainable=checkpoint is None,
        editor=editor,
        input_builder=input_builder,
        expression_inputs=inputs,
    )


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
