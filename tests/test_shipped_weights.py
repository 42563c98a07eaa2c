"""The pre-trained encoders that ship in the package, and how the model config names them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jean_nerfstudio import weights


def test_shipped_checkpoints_are_in_the_package_and_load():
    from jean_nerfstudio.audio.checkpoint import load_sync_model
    from jean_nerfstudio.expression.checkpoint import load_expression_encoder

    audio_path = weights.shipped_audio_encoder()
    expression_path = weights.shipped_expression_encoder()
    # The budget stated in the model card: a few MB each.
    assert audio_path.stat().st_size < 8 * 2**20 and expression_path.stat().st_size < 8 * 2**20
    audio, mouth, spec, payload = load_sync_model(audio_path)
    assert spec.kind == "mel"
    assert payload["metrics"], "the checkpoint carries its held-out evaluation"
    loaded = load_expression_encoder(expression_path)
    assert loaded.layout.backend == "mediapipe"
    assert (weights.WEIGHTS_DIR / weights.MODEL_CARD_FILE).is_file()


def test_shipped_checkpoints_name_no_folder_of_the_machine_that_made_them():
    for path in (weights.shipped_audio_encoder(), weights.shipped_expression_encoder()):
        payload = torch.load(path, map_location="cpu", weights_only=True)

        def strings(value):
            if isinstance(value, dict):
                for v in value.values():
                    yield from strings(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    yield from strings(v)
            elif isinstance(value, str):
                yield value

        leaked = [s for key in ("training", "metrics", "datasets") for s in strings(payload.get(key, {})) if s.startswith("/")]
        assert not leaked, f"{path.name} names absolute paths: {leaked[:3]}"


def test_config_values_resolve(tmp_path):
    assert weights.resolve_checkpoint(None, "audio") is None
    assert weights.resolve_checkpoint("none", "audio") is None
    assert weights.resolve_checkpoint(Path("None"), "expression") is None
    assert weights.resolve_checkpoint(Path("shipped"), "audio") == weights.shipped_path("audio")
    own = tmp_path / "mine.ckpt"
    assert weights.resolve_checkpoint(own, "audio") == own


def test_missing_shipped_file_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(weights.ShippedWeightsMissing) as info:
        weights.resolve_checkpoint("shipped", "audio")
    message = str(info.value)
    assert "jean-pretrain" in message and "audio-encoder-checkpoint none" in message and "\n" not in message


def test_another_format_version_is_refused_with_one_line(tmp_path):
    from jean_nerfstudio.audio.checkpoint import AudioCheckpointError, load_audio_encoder
    from jean_nerfstudio.expression.checkpoint import ExpressionCheckpointError, load_expression_encoder

    payload = torch.load(weights.shipped_audio_encoder(), map_location="cpu", weights_only=True)
    payload["format_version"] = 999
    old_audio = tmp_path / "old_audio.ckpt"
    torch.save(payload, old_audio)
    with pytest.raises(AudioCheckpointError, match="version 999.*jean-train-audio"):
        load_audio_encoder(old_audio)
    payload = torch.load(weights.shipped_expression_encoder(), map_location="cpu", weights_only=True)
    payload["version"] = 999
    old_expression = tmp_path / "old_expression.ckpt"
    torch.save(payload, old_expression)
    with pytest.raises(ExpressionCheckpointError, match="version 999.*retrain"):
        load_expression_encoder(old_expression)


def test_model_defaults_are_the_shipped_encoders():
    from jean_nerfstudio.jean_config import jean_method, jean_small_method

    for method in (jean_method, jean_small_method):
        model = method.config.pipeline.model
        assert weights.is_shipped(model.audio_encoder_checkpoint)
        assert weights.is_shipped(model.expression_encoder_checkpoint)
        assert model.expression_encoder == "transformer"
        assert model.audio_encoder_mode == "frozen" and model.expression_encoder_mode == "frozen"
        assert model.audio_through_mouth_geometry


def test_default_model_uses_the_shipped_encoders_and_none_restores_per_subject(synthetic_dataset):
    """Built on a tiny dataset with the DEFAULT jean-small model config: the audio source is the shipped stage-1
    encoder (frozen) and the expression encoder starts from the shipped weights; `none` gives per-subject nets."""
    import copy

    from jean_nerfstudio.audio.encoder import AudioEncoder
    from jean_nerfstudio.audio.source import MelWindowNet
    from jean_nerfstudio.jean_config import jean_small_method

    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = synthetic_dataset
    config.pipeline.datamanager.dataparser.data = synthetic_dataset
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model
    assert isinstance(model.audio.encoder, AudioEncoder)  # the stage-1 checkpoint, not a per-subject net
    # A render while the model is in training mode (the viewer during ns-train, the demo's timing frame) on a step
    # where the expression objective runs: its scalar terms must stay out of the chunked render's outputs.
    model.train()
    model.step = 0
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    assert model.get_outputs_for_camera(camera)["rgb"].shape[:2] == (32, 32)
    assert not any(p.requires_grad for p in model.audio.encoder.parameters())
    shipped = torch.load(weights.shipped_expression_encoder(), map_location="cpu", weights_only=True)["encoder_state"]
    name, value = next(iter(shipped.items()))
    torch.testing.assert_close(model.expression.encoder.state_dict()[name], value)

    per_subject = copy.deepcopy(config)
    per_subject.pipeline.model.audio_encoder_checkpoint = Path("none")
    per_subject.pipeline.model.expression_encoder_checkpoint = None
    model = per_subject.pipeline.setup(device="cpu", test_mode="val").model
    assert isinstance(model.audio.encoder, MelWindowNet)
    assert any(p.requires_grad for p in model.audio.encoder.parameters())
