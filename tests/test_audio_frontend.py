"""The audio front ends: one `compute_frame_windows` for mel and transformers backbones, equal to the dataset's windows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_synthetic import write_speaker_clip
from jean_nerfstudio.audio.backbone import BackboneUnavailableError, backbone_facts, backbone_features, load_backbone
from jean_nerfstudio.audio.frontend import (
    FrontEndError,
    FrontEndSpec,
    MelSettings,
    compute_frame_windows,
    resolve_frontend,
)
from jean_nerfstudio.audio.io import decode_audio
from jean_nerfstudio.contract import ProcessedClip

torch.set_num_threads(1)


def _speech(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    return (0.3 * envelope * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def test_mel_windows_equal_the_dataset_features(tmp_path: Path) -> None:
    clip = ProcessedClip.open(write_speaker_clip(tmp_path / "clip", seed=3, seconds=3.0))
    waveform = decode_audio(clip.audio_path).waveform
    windows = compute_frame_windows(FrontEndSpec(), waveform, 16000, clip.num_frames, clip.fps)
    stored = clip.feature("mel_windows")
    assert windows.shape == stored.shape == (clip.num_frames, 32, 80)
    assert windows.dtype == torch.float32
    np.testing.assert_array_equal(windows.numpy(), stored)


def test_mel_windows_equal_the_processed_tiny_dataset(request: pytest.FixtureRequest) -> None:
    """The real pipeline's clip (jean-process on a real face photo): its mel_windows.npy is our front end's output."""
    try:
        root = request.getfixturevalue("tiny_dataset")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_dataset fixture (a jean-process output) is not available in this checkout")
    clip = ProcessedClip.open(root)
    waveform = decode_audio(clip.audio_path).waveform
    windows = compute_frame_windows(FrontEndSpec(mel=MelSettings.from_dict(clip.metadata["mel"])), waveform, 16000, clip.num_frames, clip.fps)
    np.testing.assert_allclose(windows.numpy(), clip.feature("mel_windows"), atol=1e-4)


def test_mel_front_end_resamples_other_rates() -> None:
    import torchaudio

    wave16 = _speech()
    wave48 = torchaudio.functional.resample(torch.from_numpy(wave16), 16000, 48000).numpy()
    a = compute_frame_windows(FrontEndSpec(), wave16, 16000, 50, 25.0)
    b = compute_frame_windows(FrontEndSpec(), wave48, 48000, 50, 25.0)
    assert a.shape == b.shape
    # Resampling there and back is not bit-exact; the normalized features agree closely.
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_spec_round_trip_and_resolution() -> None:
    spec = resolve_frontend(FrontEndSpec())
    assert spec.feature_dim == 80 and spec.feature_rate == 100.0 and spec.window_frames == 32
    assert FrontEndSpec.from_dict(spec.to_dict()) == spec
    assert "allow_download" not in spec.to_dict()
    with pytest.raises(FrontEndError):
        FrontEndSpec.from_dict({"kind": "whisper"})


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Randomly initialized tiny Wav2Vec2 and HuBERT models saved like real downloads (no network anywhere)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    small = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    folder = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**small)).save_pretrained(folder / "w2v")
    HubertModel(HubertConfig(**small)).save_pretrained(folder / "hubert")
    return {"wav2vec2": str(folder / "w2v"), "hubert": str(folder / "hubert")}


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_backbone_front_end_windows(tiny_backbones: dict, kind: str) -> None:
    spec = resolve_frontend(FrontEndSpec(kind=kind, backbone=tiny_backbones[kind]))
    assert spec.feature_dim == 32 and spec.feature_rate == 50.0 and spec.layer == 2  # 2/3 of 3 layers
    assert spec.window_frames == 16  # 0.32 s at 50 frames/s
    waveform = _speech(2.0)
    windows = compute_frame_windows(spec, waveform, 16000, 50, 25.0)
    assert windows.shape == (50, 16, 32) and torch.isfinite(windows).all()
    # The spec recorded in a checkpoint reproduces the windows (same backbone, same layer).
    again = compute_frame_windows(FrontEndSpec.from_dict(spec.to_dict()), waveform, 16000, 50, 25.0)
    torch.testing.assert_close(windows, again)


def test_backbone_frames_are_centred_on_their_time(tiny_backbones: dict) -> None:
    """Frame k of the backbone covers sample k * stride (the convention `frame_windows` assumes for every front end)."""
    model = load_backbone("wav2vec2", tiny_backbones["wav2vec2"])
    facts = backbone_facts(model)
    assert (facts.stride, facts.receptive_field) == (320, 400)
    wave = torch.from_numpy(_speech(1.0))
    features, quiet = backbone_features(model, wave, layer=0)
    assert features.shape == (wave.numel() // 320 + 1, 32)
    assert 0 <= quiet < features.shape[0]
    # Chunked processing covers every frame once (context makes chunk borders nearly seamless).
    chunked, _ = backbone_features(model, wave, layer=0, chunk_seconds=0.3)
    assert chunked.shape == features.shape
    assert torch.corrcoef(torch.stack([chunked.flatten(), features.flatten()]))[0, 1] > 0.9


def test_backbone_errors_are_one_clear_line(tiny_backbones: dict, tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError, match="not in the Hugging Face cache.*hf download"):
        resolve_frontend(FrontEndSpec(kind="hubert", backbone="jean-tests/no-such-model"))
    assert time.perf_counter() - start < 10.0  # no network retries
    with pytest.raises(BackboneUnavailableError, match="no such model directory"):
        resolve_frontend(FrontEndSpec(kind="hubert", backbone=str(tmp_path / "missing")))
    with pytest.raises(BackboneUnavailableError, match="not a transformers model directory"):
        resolve_frontend(FrontEndSpec(kind="hubert", backbone=str(tmp_path)))
    with pytest.raises(BackboneUnavailableError, match="is a 'wav2vec2' model, not 'hubert'"):
        resolve_frontend(FrontEndSpec(kind="hubert", backbone=tiny_backbones["wav2vec2"]))
    with pytest.raises(FrontEndError, match="out of range"):
        resolve_frontend(FrontEndSpec(kind="wav2vec2", backbone=tiny_backbones["wav2vec2"], layer=9))
