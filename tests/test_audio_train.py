"""`jean-train-audio` end to end on synthetic speakers: it learns sync, its checkpoint is what the NeRF model loads,
and bad input ends in one red line and exit status 2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from audio_synthetic import write_speaker_clip
from jean_nerfstudio.audio.checkpoint import (
    AudioCheckpointError,
    load_audio_encoder,
    load_sync_model,
    mouth_settings_from,
    read_checkpoint,
)
from jean_nerfstudio.audio.data import build_corpus, open_clips
from jean_nerfstudio.audio.encoder import AudioEncoderConfig, DisentangleConfig, MouthEncoderConfig, SyncModelConfig
from jean_nerfstudio.audio.evaluate import embed_corpus, sync_retrieval
from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
from jean_nerfstudio.audio.io import decode_audio
from jean_nerfstudio.audio.train import AudioTrainConfig
from jean_nerfstudio.audio.train_cli import main

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SMALL = SyncModelConfig(
    audio=AudioEncoderConfig(width=48, output_dim=32, embed_dim=32),
    mouth=MouthEncoderConfig(hidden=48),
)


@pytest.fixture(scope="module")
def speakers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("speakers")
    train = [write_speaker_clip(folder / f"train_{i}", seed=i, seconds=6.0) for i in range(4)]
    heldout = write_speaker_clip(folder / "heldout", seed=99, seconds=6.0)
    return {"train": train, "heldout": heldout, "folder": folder}


@pytest.fixture(scope="module")
def trained(speakers: dict, tmp_path_factory: pytest.TempPathFactory):
    """One real (small, 150-step) training run through the CLI's main(), shared by the checks below."""
    output = tmp_path_factory.mktemp("run") / "encoder.ckpt"
    config = AudioTrainConfig(
        datasets=speakers["train"],
        eval_datasets=[speakers["heldout"]],
        output=output,
        max_steps=150,
        batch_size=32,
        warmup_steps=20,
        model=SMALL,
    )
    buffer = io.StringIO()
    status = main(config, console=Console(file=buffer, width=200, soft_wrap=True))
    return {"status": status, "output": output, "stdout": buffer.getvalue(), "config": config}


def test_training_learns_sync_on_unseen_speakers(trained: dict) -> None:
    assert trained["status"] == 0
    assert "held-out sync retrieval accuracy:" in trained["stdout"]
    metrics = read_checkpoint(trained["output"])["metrics"]
    held = metrics["heldout_clips"]
    assert held["num_anchors"] == 150 - 30
    # Chance is 1/31; a model that learned nothing about timing stays near it.
    assert held["accuracy"] > 0.5, held
    assert held["within_one"] >= held["accuracy"]
    errors = [o["error"] for o in metrics["offsets"]]
    assert [o["true"] for o in metrics["offsets"]] == [-6, -3, 0, 3, 6]
    assert max(errors) <= 1, metrics["offsets"]
    probe = metrics["probe"]
    assert probe["num_frames"] == 150 and len(probe["r2_per_channel"]) == 15


def test_checkpoint_records_what_the_model_needs(trained: dict, speakers: dict) -> None:
    payload = read_checkpoint(trained["output"])
    assert payload["frontend"]["kind"] == "mel" and payload["frontend"]["feature_dim"] == 80
    assert payload["audio_encoder"]["config"]["in_channels"] == 80
    assert [d["name"] for d in payload["training"]["datasets"]] == [p.name for p in speakers["train"]]
    assert payload["training"]["steps"] == 150 and payload["training"]["world_size"] == 1
    assert payload["training"]["settings"]["model"]["disentangle"]["method"] == "decorrelation"
    assert not (trained["output"].parent / f".{trained['output'].stem}.tmp-{os.getpid()}.ckpt").exists()


def test_the_model_interface(trained: dict, speakers: dict) -> None:
    """Exactly what the NeRF model does: load, window new audio with the recorded spec, encode per frame."""
    encoder, spec = load_audio_encoder(trained["output"], device="cpu")
    assert isinstance(spec, FrontEndSpec) and spec.kind == "mel"
    waveform = decode_audio(speakers["heldout"] / "audio.wav").waveform
    windows = compute_frame_windows(spec, waveform, 16000, 150, 25.0)
    assert windows.shape == (150, 32, 80)
    features = encoder(windows)
    assert features.shape == (150, encoder.output_dim) and torch.isfinite(features).all()
    torch.testing.assert_close(encoder(windows[7:8])[0], features[7], rtol=1e-5, atol=1e-5)  # batch-consistent
    assert encoder.project(features).shape == (150, encoder.embed_dim)
    encoder.requires_grad_(False)  # frozen use
    assert not any(p.requires_grad for p in encoder.parameters())


def test_reloaded_towers_reproduce_the_recorded_retrieval(trained: dict, speakers: dict) -> None:
    audio, mouth, spec, payload = load_sync_model(trained["output"])
    settings, with_blend, source = mouth_settings_from(payload)
    corpus = build_corpus(open_clips([speakers["heldout"]]), spec, settings, with_blend, source)
    emb = embed_corpus(audio, mouth, corpus)
    result = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, corpus.whole_clip_anchors(15))
    assert result.accuracy == pytest.approx(payload["metrics"]["heldout_clips"]["accuracy"])


def test_checkpoint_errors_are_one_line(tmp_path: Path, trained: dict) -> None:
    with pytest.raises(AudioCheckpointError, match="no such audio-encoder checkpoint"):
        load_audio_encoder(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioCheckpointError, match="not a readable audio-encoder checkpoint"):
        load_audio_encoder(garbage)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["output"].read_bytes()[:20000])
    with pytest.raises(AudioCheckpointError, match="not a readable"):
        load_audio_encoder(truncated)
    foreign = tmp_path / "step-000001.ckpt"
    torch.save({"pipeline": {}, "step": 1}, foreign)
    with pytest.raises(AudioCheckpointError, match="nerfstudio pipeline checkpoint, not an audio-encoder"):
        load_audio_encoder(foreign)
    for err in (AudioCheckpointError,):
        try:
            load_audio_encoder(foreign)
        except err as caught:
            assert "\n" not in str(caught)


def _cli(config: AudioTrainConfig, capsys) -> tuple[int, str]:
    status = main(config)
    out = capsys.readouterr()
    return status, out.out + out.err


def test_bad_input_is_one_red_line_and_exit_2(tmp_path: Path, speakers: dict, capsys) -> None:
    good = speakers["train"][:1]
    cases = []
    cases.append((AudioTrainConfig(datasets=[tmp_path / "nope"], output=tmp_path / "a.ckpt"), "no such dataset folder"))
    unfinished = write_speaker_clip(tmp_path / "unfinished", seed=1, seconds=2.0)
    meta = unfinished / "jean.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    cases.append((AudioTrainConfig(datasets=[unfinished], output=tmp_path / "b.ckpt"), "unfinished"))
    short = write_speaker_clip(tmp_path / "short", seed=2, seconds=1.2)
    cases.append((AudioTrainConfig(datasets=[short], output=tmp_path / "c.ckpt"), "too short for the sync windows"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases.append((AudioTrainConfig(datasets=good, output=blocker / "enc.ckpt"), "cannot write there"))
    cases.append((AudioTrainConfig(datasets=good, output=tmp_path), "is a directory"))
    cases.append(
        (AudioTrainConfig(datasets=good, eval_datasets=good, output=tmp_path / "d.ckpt"), "both a training and a held-out")
    )
    for config, message in cases:
        status, text = _cli(config, capsys)
        assert status == 2, text
        assert message in text, text
        assert text.strip().startswith("jean-train-audio: error:") and len(text.strip().splitlines()) == 1, text


def test_console_script_exit_status(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "jean-train-audio"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jean_nerfstudio.audio.train_cli"]
    result = subprocess.run(
        command + [str(tmp_path / "missing"), "--output", str(tmp_path / "x.ckpt")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "jean-train-audio: error:" in result.stderr and "no such dataset folder" in result.stderr


def test_backbone_front_end_trains_and_round_trips(tmp_path: Path, speakers: dict) -> None:
    """A (tiny, random) wav2vec2 front end: the choice and its dims are recorded, the model interface works with it."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    backbone = tmp_path / "w2v"
    Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, conv_dim=(24,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        )
    ).save_pretrained(backbone)
    output = tmp_path / "w2v.ckpt"
    config = AudioTrainConfig(
        datasets=speakers["train"][:2],
        output=output,
        max_steps=3,
        batch_size=8,
        frontend=FrontEndSpec(kind="wav2vec2", backbone=str(backbone)),
        model=SyncModelConfig(
            audio=AudioEncoderConfig(width=16, dilations=(1, 2), output_dim=16, embed_dim=16),
            mouth=MouthEncoderConfig(hidden=16),
            disentangle=DisentangleConfig(method="adversary"),
        ),
    )
    from jean_nerfstudio.audio.train import train

    train(config, log=lambda *_: None)
    encoder, spec = load_audio_encoder(output)
    assert (spec.kind, spec.backbone, spec.feature_dim, spec.feature_rate, spec.layer) == ("wav2vec2", str(backbone), 24, 50.0, 1)
    assert encoder.config.in_channels == 24 and encoder.config.window == 16
    waveform = decode_audio(speakers["heldout"] / "audio.wav").waveform
    windows = compute_frame_windows(spec, waveform, 16000, 150, 25.0)
    assert encoder(windows).shape == (150, 16)


@pytest.mark.slow
def test_trains_on_a_jean_process_output(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The real pipeline's clip (jean-process on a real face photo): mouth features, training, the model interface."""
    try:
        root = request.getfixturevalue("tiny_dataset")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_dataset fixture (a jean-process output) is not available in this checkout")
    from jean_nerfstudio.audio.train import train
    from jean_nerfstudio.contract import ProcessedClip

    clip = ProcessedClip.open(root)
    output = tmp_path / "tiny.ckpt"
    result = train(AudioTrainConfig(datasets=[root], output=output, max_steps=3, batch_size=8, model=SMALL), log=lambda *_: None)
    assert result.steps == 3 and np.isfinite(result.final_loss)
    encoder, spec = load_audio_encoder(output)
    windows = compute_frame_windows(spec, decode_audio(clip.audio_path).waveform, 16000, clip.num_frames, clip.fps)
    np.testing.assert_allclose(windows.numpy(), clip.feature("mel_windows"), atol=1e-4)
    assert encoder(windows).shape == (clip.num_frames, encoder.output_dim)
