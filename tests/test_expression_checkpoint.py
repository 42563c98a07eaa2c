"""Expression-encoder checkpoints: round trip, one-line errors, and the model-side builder."""

from __future__ import annotations

import pytest
import torch

from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.checkpoint import (
    ExpressionCheckpointError,
    build_expression_encoder,
    load_expression_encoder,
    save_expression_encoder,
)
from jean_nerfstudio.expression.encoder import ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionLayoutError, expression_inputs
from jean_nerfstudio.expression.objective import ExpressionObjectiveConfig
from jean_nerfstudio.expression.synthetic import synthetic_face_features, write_expression_clip

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("expression_clips")
    mp = expression_inputs(ProcessedClip.open(write_expression_clip(root / "mp", synthetic_face_features(120))))
    fa = expression_inputs(
        ProcessedClip.open(write_expression_clip(root / "fa", synthetic_face_features(120, backend="face-alignment")))
    )
    return mp, fa


def trained_pair(inputs):
    encoder, objective = build_expression_encoder(
        inputs, encoder_config=ExpressionEncoderConfig(hidden_dim=32, window_seconds=2.0)
    )
    with torch.no_grad():  # move every weight off its initialization so the round trip is a real check
        for p in list(encoder.parameters()) + list(objective.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return encoder.eval(), objective.eval()


def test_round_trip_gives_identical_codes_and_metadata(clips, tmp_path) -> None:
    mp, _ = clips
    encoder, objective = trained_pair(mp)
    path = save_expression_encoder(tmp_path / "sub" / "enc.ckpt", encoder, objective, ["a", "b"], {"probe": 0.5})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # written atomically, no temp left
    loaded = load_expression_encoder(path)
    assert torch.equal(loaded.encoder(mp.values), encoder(mp.values))
    assert torch.equal(loaded.objective.decode(torch.ones(3, 32)), objective.decode(torch.ones(3, 32)))
    assert loaded.encoder.config.window_seconds == 2.0 and loaded.trained_fps == 25.0
    assert loaded.datasets == ["a", "b"] and loaded.metrics == {"probe": 0.5}
    assert loaded.layout.signature() == mp.layout.signature()
    assert not loaded.encoder.training
    # Loaded at another frame rate: same weights, bands re-derived from the window in seconds.
    at30 = load_expression_encoder(path, fps=30.0)
    assert at30.encoder.fps == 30.0 and at30.encoder.receptive_radius == 30
    # weights_only loading works (no pickled classes inside).
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "jean-expression-encoder" and payload["fps"] == 25.0


def test_bad_files_give_one_line_errors(clips, tmp_path) -> None:
    mp, _ = clips
    encoder, objective = trained_pair(mp)
    good = save_expression_encoder(tmp_path / "good.ckpt", encoder, objective)
    cases = {}
    cases["missing"] = (tmp_path / "nope.ckpt", "no such expression-encoder checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    cases["truncated"] = (truncated, "unreadable checkpoint")
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    cases["text"] = (text, "unreadable checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"pipeline": {}, "step": 3}, foreign)
    cases["foreign"] = (foreign, "not an expression-encoder checkpoint")
    payload = torch.load(good, weights_only=True)
    payload["version"] = 99
    other_version = tmp_path / "v99.ckpt"
    torch.save(payload, other_version)
    cases["version"] = (other_version, "version 99")
    payload["version"] = 1
    payload["encoder_state"] = {k: v[..., :1] for k, v in payload["encoder_state"].items()}
    corrupt = tmp_path / "corrupt.ckpt"
    torch.save(payload, corrupt)
    cases["corrupt"] = (corrupt, "corrupt checkpoint")
    for name, (path, message) in cases.items():
        with pytest.raises(ExpressionCheckpointError, match=message) as info:
            load_expression_encoder(path)
        assert "\n" not in str(info.value), name


def test_builder_from_scratch_and_from_checkpoint(clips, tmp_path) -> None:
    mp, fa = clips
    encoder, objective = build_expression_encoder(mp)
    assert encoder.training and objective.training
    assert encoder.input_dim == mp.input_dim and encoder.fps == mp.fps
    train_rows = mp.values[mp.train_frames]
    assert torch.allclose(encoder.input_center, train_rows.median(0).values)  # fitted on the training frames
    losses = objective(encoder, mp.values, mp.speech_targets)
    assert torch.isfinite(sum(losses.values()))

    trained, trained_objective = trained_pair(mp)
    path = save_expression_encoder(tmp_path / "enc.ckpt", trained, trained_objective)
    encoder, objective = build_expression_encoder(mp, checkpoint=path)
    assert torch.equal(encoder.eval()(mp.values), trained(mp.values))
    # New loss weights keep the trained decoder.
    _, reweighted = build_expression_encoder(
        mp, checkpoint=path, objective_config=ExpressionObjectiveConfig(speech_leak_weight=5.0)
    )
    assert reweighted.config.speech_leak_weight == 5.0
    assert torch.equal(reweighted.decode(torch.ones(2, 32)), trained_objective.decode(torch.ones(2, 32)))
    # A clip of another landmark layout cannot use this encoder.
    with pytest.raises(ExpressionLayoutError, match="face-alignment"):
        build_expression_encoder(fa, checkpoint=path)
