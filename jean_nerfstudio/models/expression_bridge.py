"""The transformer expression encoder (jean_nerfstudio.expression) as the model's expression source.

`ns-train jean` trains the encoder end to end with the head (from scratch, or from a `jean-train-expression`
checkpoint): the head's photometric loss shapes the codes, and the encoder's own self-supervised objective (masked
temporal modelling, the speech-leak penalty, smoothness) keeps them about expression and free of the phonetic mouth
shape, which belongs to the audio pathway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.models.sources import ExpressionSource


def build_transformer_expression_source(clip: ProcessedClip, checkpoint: Optional[Path]) -> ExpressionSource:
    """Inputs, encoder (+ objective), viewer edits and transfer for the transformer expression pathway."""
    from jean_nerfstudio.expression.model_parts import ClipExpressionObjective, expression_model_parts

    parts = expression_model_parts(clip, checkpoint=checkpoint)
    train_frames = clip.train_indices
    contiguous_prefix = train_frames == list(range(len(train_frames)))
    num_train = len(train_frames) if contiguous_prefix else parts.inputs.shape[0]
    return ExpressionSource(
        inputs=parts.inputs.float(),
        encoder=parts.encoder,
        # Only the training split's frames (a contiguous prefix): nothing of the held-out tail shapes training.
        objective=ClipExpressionObjective(parts.objective.objective, parts.expression_inputs.speech_targets.float(),
                                          num_frames=num_train),
        controls=parts.controls,
        layout={"kind": "transformer", "backend": clip.landmark_backend, "num_features": int(parts.inputs.shape[1]),
                "signature": parts.expression_inputs.layout.signature()},
        context_frames=int(parts.context_frames),
        trainable=parts.trainable,
        editor=parts.editor,
        input_builder=parts.input_builder,
    )
