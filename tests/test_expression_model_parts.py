"""The expression package's one factory: the expression source the NeRF model holds (transformer and mlp)."""

from __future__ import annotations

import pytest
import torch

from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.expression.checkpoint import save_expression_encoder
from jean_nerfstudio.expression.encoder import ExpressionEncoderConfig
from jean_nerfstudio.expression.source import (
    ClipExpressionObjective,
    FrameMLPExpressionEncoder,
    build_expression_source,
    codes_for_frames,
)
from jean_nerfstudio.expression.synthetic import synthetic_face_features, write_expression_clip

torch.set_num_threads(1)


def test_source_from_scratch_and_from_a_checkpoint(tmp_path, monkeypatch) -> None:
    clip = ProcessedClip.open(write_expression_clip(tmp_path / "head", synthetic_face_features(200, seed=0)))
    other = ProcessedClip.open(write_expression_clip(tmp_path / "other", synthetic_face_features(150, fps=30.0, seed=4)))
    fa = ProcessedClip.open(write_expression_clip(tmp_path / "fa", synthetic_face_features(90, backend="face-alignment")))

    parts = build_expression_source(clip, "transformer", encoder_config=ExpressionEncoderConfig(hidden_dim=32))
    assert parts.trainable and parts.encoder.training
    assert parts.inputs.shape == (200, parts.encoder.input_dim)
    assert parts.context_frames == parts.encoder.receptive_radius == 38 and parts.fps == clip.fps
    # Bound once, to the training split (a contiguous prefix): the held-out tail never shapes training.
    assert isinstance(parts.objective, ClipExpressionObjective) and parts.objective.num_frames == len(clip.train_indices)
    codes = parts.encoder(parts.inputs)
    losses = parts.objective(parts.encoder, parts.inputs, codes=codes)
    assert "expression_speech_leak" in losses and all(torch.isfinite(v) for v in losses.values())
    decoder_params = {id(p) for p in parts.objective.parameters()}
    assert decoder_params and not decoder_params & {id(p) for p in parts.encoder.parameters()}
    assert set(parts.controls) >= {"smile", "brow_raise", "blink", "frown", "squint"}
    assert parts.editor(parts.inputs[5], {"blink": 1.0}).shape == parts.inputs[5].shape
    sequence = parts.sequence_of(other)
    assert sequence.values.shape == (125, parts.encoder.input_dim) and sequence.fps == 25.0  # 5 s resampled to 25 fps
    with pytest.raises(DatasetError):  # another landmarker: a one-line dataset error
        parts.sequence_of(fa)

    parts.encoder.eval()
    frames = torch.tensor([3, 100, 101, 190])
    assert torch.allclose(codes_for_frames(parts.encoder, parts.inputs, frames), parts.encoder(parts.inputs)[frames],
                          atol=1e-5)

    path = save_expression_encoder(tmp_path / "enc.ckpt", parts.encoder, parts.objective.objective)
    import jean_nerfstudio.expression.source as source_module

    loads = []
    real_load = source_module.load_expression_encoder
    monkeypatch.setattr(source_module, "load_expression_encoder", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    loaded = build_expression_source(clip, "transformer", checkpoint=path)
    assert len(loads) == 1  # the checkpoint is read once
    assert not loaded.trainable
    assert torch.allclose(loaded.encoder.eval()(loaded.inputs), parts.encoder(parts.inputs))


def test_mlp_source_reads_each_frame_at_its_own_rate(tmp_path) -> None:
    clip = ProcessedClip.open(write_expression_clip(tmp_path / "head", synthetic_face_features(60, seed=0)))
    other = ProcessedClip.open(write_expression_clip(tmp_path / "other", synthetic_face_features(45, fps=30.0, seed=4)))
    source = build_expression_source(clip, "mlp")
    assert isinstance(source.encoder, FrameMLPExpressionEncoder) and source.objective is None and source.editor is None
    assert source.context_frames == 0 and source.trainable and source.inputs.shape[0] == 60
    sequence = source.sequence_of(other)  # per-frame codes have no time scale: nothing is resampled
    assert sequence.values.shape == (45, source.inputs.shape[1]) and sequence.fps == 30.0
