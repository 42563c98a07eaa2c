"""The one-call expression pathway the NeRF model and the renderer use."""

from __future__ import annotations

import pytest
import torch

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.checkpoint import save_expression_encoder
from jean_nerfstudio.expression.encoder import ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionLayoutError
from jean_nerfstudio.expression.model_parts import codes_for_frames, expression_model_parts
from jean_nerfstudio.expression.synthetic import synthetic_face_features, write_expression_clip

torch.set_num_threads(1)


def test_parts_from_scratch_and_from_a_checkpoint(tmp_path) -> None:
    clip = ProcessedClip.open(write_expression_clip(tmp_path / "head", synthetic_face_features(200, seed=0)))
    other = ProcessedClip.open(write_expression_clip(tmp_path / "other", synthetic_face_features(150, fps=30.0, seed=4)))
    fa = ProcessedClip.open(write_expression_clip(tmp_path / "fa", synthetic_face_features(90, backend="face-alignment")))

    parts = expression_model_parts(clip, encoder_config=ExpressionEncoderConfig(hidden_dim=32))
    assert parts.trainable and parts.encoder.training
    assert parts.inputs.shape == (200, parts.encoder.input_dim)
    assert parts.context_frames == parts.encoder.receptive_radius == 38
    codes = parts.encoder(parts.inputs)
    losses = parts.objective(parts.encoder, parts.inputs, codes=codes)
    assert "expression_speech_leak" in losses and all(torch.isfinite(v) for v in losses.values())
    decoder_params = {id(p) for p in parts.objective.parameters()}
    assert decoder_params and not decoder_params & {id(p) for p in parts.encoder.parameters()}
    assert set(parts.controls) >= {"smile", "brow_raise", "blink", "frown", "squint"}
    assert parts.editor(parts.inputs[5], {"blink": 1.0}).shape == parts.inputs[5].shape
    assert parts.input_builder(other).shape == (125, parts.encoder.input_dim)  # 6 s resampled to 25 fps
    with pytest.raises(ExpressionLayoutError):
        parts.input_builder(fa)

    parts.encoder.eval()
    frames = torch.tensor([3, 100, 101, 190])
    assert torch.allclose(codes_for_frames(parts.encoder, parts.inputs, frames), parts.encoder(parts.inputs)[frames],
                          atol=1e-5)

    path = save_expression_encoder(tmp_path / "enc.ckpt", parts.encoder, parts.objective.objective)
    loaded = expression_model_parts(clip, checkpoint=path)
    assert not loaded.trainable
    assert torch.allclose(loaded.encoder.eval()(loaded.inputs), parts.encoder(parts.inputs))
