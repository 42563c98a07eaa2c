"""The expression pathway on a clip made by the real `jean-process` pipeline (the session's `tiny_dataset`)."""

from __future__ import annotations

import torch

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.checkpoint import build_expression_encoder
from jean_nerfstudio.expression.controls import EXPRESSION_CONTROLS, apply_controls
from jean_nerfstudio.expression.inputs import expression_inputs
from jean_nerfstudio.expression.transfer import load_expression_sequence

torch.set_num_threads(1)


def test_processed_clip_feeds_the_encoder_and_objective(tiny_dataset) -> None:
    clip = ProcessedClip.open(tiny_dataset)
    inputs = expression_inputs(clip)
    assert inputs.num_frames == clip.num_frames and inputs.fps == clip.fps
    assert inputs.layout.backend == clip.landmark_backend
    assert torch.isfinite(inputs.values).all() and torch.isfinite(inputs.speech_targets).all()
    assert inputs.train_frames == clip.train_indices
    encoder, objective = build_expression_encoder(inputs)
    losses = objective(encoder, inputs.values, inputs.speech_targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # The clip drives itself through the transfer path, and every control applies to its layout.
    sequence = load_expression_sequence(tiny_dataset, inputs)
    assert torch.allclose(sequence.values, inputs.values)
    edited = apply_controls(inputs.values, {name: 0.5 for name in EXPRESSION_CONTROLS}, inputs.layout)
    assert edited.shape == inputs.values.shape and not torch.equal(edited, inputs.values)
