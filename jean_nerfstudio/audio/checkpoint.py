"""Audio-encoder checkpoints: what `jean-train-audio` writes and the NeRF model reads.

The file is a `torch.save` dict of plain values and tensors only (loadable with `weights_only=True`):

    format, format_version   "jean-audio-encoder", 1
    frontend                 FrontEndSpec.to_dict(): kind, mel settings or backbone name + layer, feature dim/rate
    audio_encoder            {"config": AudioEncoderConfig.to_dict(), "state_dict": ...}
    mouth_encoder            {"config": ..., "state_dict": ..., "features": MouthFeatureSettings + sources}
    training                 datasets (path, frames, fps), held-out datasets, settings, steps, seconds, device,
                             world size, per-rank weight checksums
    metrics                  EvaluationReport.to_dict() (held-out retrieval, offsets, upper-face probe)
    mouth_prior              optional: MouthPrior.to_dict(), the corpus map from the features to the speech-driven
                             mouth geometry that the head's readout is shrunk towards (`jean-pretrain` adds it)
    versions, created

The speech backbone of a `wav2vec2` / `hubert` front end is not stored (it is frozen and large): the spec names it,
and `compute_frame_windows` loads it from the same local directory or cache.

Use from the NeRF model::

    encoder, spec = load_audio_encoder(path, device)
    windows = compute_frame_windows(spec, waveform_16k, 16000, num_frames, fps)   # [N, W, C]
    features = encoder(windows.to(device))                                        # [N, encoder.output_dim]
"""

from __future__ import annotations

import datetime
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from jean_nerfstudio.audio.data import MouthFeatureSettings
from jean_nerfstudio.audio.encoder import AudioEncoder, AudioEncoderConfig, MouthEncoder, MouthEncoderConfig
from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
from jean_nerfstudio.audio.mouth_prior import MouthPrior
from jean_nerfstudio.errors import UserError
from jean_nerfstudio.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "jean-audio-encoder"
CHECKPOINT_VERSION = 1


class AudioCheckpointError(UserError, RuntimeError):
    """An audio-encoder checkpoint is missing, unreadable, or not an audio-encoder checkpoint. One-line message."""


def _plain_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_checkpoint(
    path: Path | str,
    spec: FrontEndSpec,
    audio: AudioEncoder,
    mouth: MouthEncoder,
    mouth_settings: MouthFeatureSettings,
    with_blendshapes: bool,
    upper_source: str,
    training: Dict[str, Any],
    metrics: Dict[str, Any],
) -> Path:
    """Write the checkpoint atomically (a reader never sees a half-written file under the final name)."""
    import numpy as np
    import torchaudio

    import jean_nerfstudio

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "frontend": spec.to_dict(),
        "audio_encoder": {"config": audio.config.to_dict(), "state_dict": _plain_state(audio)},
        "mouth_encoder": {
            "config": mouth.config.to_dict(),
            "state_dict": _plain_state(mouth),
            "features": {**asdict(mouth_settings), "with_blendshapes": bool(with_blendshapes), "upper_source": upper_source},
        },
        "training": training,
        "metrics": metrics,
        "versions": {
            "jean_nerfstudio": getattr(jean_nerfstudio, "__version__", "unknown"),
            "torch": str(torch.__version__),
            "torchaudio": str(torchaudio.__version__),
            "numpy": str(np.__version__),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: Path | str) -> Dict[str, Any]:
    """The raw checkpoint dict, validated (AudioCheckpointError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise AudioCheckpointError(f"{path}: no such audio-encoder checkpoint; train one with `jean-train-audio DATASETS... --output {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError) as err:
        raise AudioCheckpointError(
            f"{path}: not a readable audio-encoder checkpoint ({type(err).__name__}); it may be truncated or of "
            "another program, re-run `jean-train-audio`"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        what = "a nerfstudio pipeline checkpoint" if isinstance(payload, dict) and "pipeline" in payload else "another kind of file"
        raise AudioCheckpointError(f"{path}: is {what}, not an audio-encoder checkpoint; make one with `jean-train-audio`")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise AudioCheckpointError(
            f"{path}: audio-encoder checkpoint version {payload.get('format_version')}, this jean_nerfstudio reads "
            f"version {CHECKPOINT_VERSION}; re-train it with `jean-train-audio`"
        )
    for key in ("frontend", "audio_encoder", "mouth_encoder"):
        if key not in payload:
            raise AudioCheckpointError(f"{path}: audio-encoder checkpoint lacks {key!r}; re-train it with `jean-train-audio`")
    return payload


def read_mouth_prior(path: Path | str) -> Optional[MouthPrior]:
    """The checkpoint's corpus map to the speech-driven mouth geometry (`jean-pretrain` adds it), or None."""
    return mouth_prior_from(read_checkpoint(path), path)


def mouth_prior_from(payload: Dict[str, Any], path: Path | str) -> Optional[MouthPrior]:
    """`read_mouth_prior` on a checkpoint already read (`read_checkpoint(path)`), so it is not loaded twice."""
    path = Path(path)
    values = payload.get("mouth_prior")
    if values is None:
        return None
    try:
        return MouthPrior.from_dict(values)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise AudioCheckpointError(f"{path}: unreadable mouth prior ({err}); re-run `jean-pretrain`") from err


def add_mouth_prior(path: Path | str, prior: MouthPrior) -> Path:
    """Store `prior` in the checkpoint at `path` (rewritten atomically; an earlier prior is replaced)."""
    path = Path(path)
    payload = read_checkpoint(path)
    payload["mouth_prior"] = prior.to_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _build(module_class, config, state: Dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    module = module_class(config)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise AudioCheckpointError(f"{path}: the {what} weights do not fit its recorded config; re-train it") from err
    return module


def load_audio_encoder(path: Path | str, device: torch.device | str = "cpu") -> Tuple[AudioEncoder, FrontEndSpec]:
    """Load the audio encoder and the front-end spec it was trained with.

    Args:
        path: a checkpoint written by `jean-train-audio`.
        device: where the encoder's weights go.

    Returns:
        (encoder, spec). `encoder(windows [N, W, C]) -> [N, encoder.output_dim]` is the per-frame conditioning feature
        (LayerNorm'd); `encoder.project(features) -> [N, encoder.embed_dim]` is the unit-length lip-sync space. The
        encoder is returned in eval mode with trainable parameters: call `encoder.requires_grad_(False)` to use it
        frozen. `spec` goes to `compute_frame_windows(spec, waveform, sample_rate, num_frames, fps)`.

    Raises:
        AudioCheckpointError: missing, corrupt or foreign file (one-line message).
    """
    return audio_encoder_from(read_checkpoint(path), path, device)


def audio_encoder_from(
    payload: Dict[str, Any], path: Path | str, device: torch.device | str = "cpu"
) -> Tuple[AudioEncoder, FrontEndSpec]:
    """`load_audio_encoder` on a checkpoint already read (`read_checkpoint(path)`), so it is not loaded twice."""
    path = Path(path)
    try:
        spec = FrontEndSpec.from_dict(payload["frontend"])
        config = AudioEncoderConfig.from_dict(payload["audio_encoder"]["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise AudioCheckpointError(f"{path}: unreadable front-end or encoder description ({err}); re-train it") from err
    encoder = _build(AudioEncoder, config, payload["audio_encoder"]["state_dict"], path, "audio encoder")
    return encoder.to(device).eval(), spec


def load_sync_model(
    path: Path | str, device: torch.device | str = "cpu"
) -> Tuple[AudioEncoder, MouthEncoder, FrontEndSpec, Dict[str, Any]]:
    """Both towers (for sync scoring: evaluation, rendered-video lip-sync checks) and the raw checkpoint dict."""
    path = Path(path)
    payload = read_checkpoint(path)
    encoder, spec = audio_encoder_from(payload, path, device)
    mouth_config = MouthEncoderConfig.from_dict(payload["mouth_encoder"]["config"])
    mouth = _build(MouthEncoder, mouth_config, payload["mouth_encoder"]["state_dict"], path, "mouth encoder")
    return encoder, mouth.to(device).eval(), spec, payload


def mouth_settings_from(payload: Dict[str, Any]) -> Tuple[MouthFeatureSettings, bool, str]:
    """The mouth-feature settings and sources a checkpoint's mouth tower was trained with."""
    values = dict(payload["mouth_encoder"]["features"])
    with_blendshapes = bool(values.pop("with_blendshapes"))
    upper_source = str(values.pop("upper_source"))
    known = {k: values[k] for k in MouthFeatureSettings.__dataclass_fields__ if k in values}
    return MouthFeatureSettings(**known), with_blendshapes, upper_source


__all__ = [
    "AudioCheckpointError",
    "CHECKPOINT_FORMAT",
    "add_mouth_prior",
    "audio_encoder_from",
    "FrontEndSpec",
    "compute_frame_windows",
    "load_audio_encoder",
    "load_sync_model",
    "mouth_prior_from",
    "mouth_settings_from",
    "read_checkpoint",
    "read_mouth_prior",
    "save_checkpoint",
]
