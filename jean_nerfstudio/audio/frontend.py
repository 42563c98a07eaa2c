"""The audio front end: a waveform becomes a feature sequence at a fixed rate, then one window per video frame.

The default front end is a log-mel spectrogram (torchaudio) normalized per utterance (cepstral mean/variance
normalization), which removes most of the recording channel and speaker loudness; that is what lets a head trained on
one microphone follow audio from another. The optional front end is a frozen transformers speech backbone
(Wav2Vec2 / HuBERT, see `backbone.py`), normalized the same way. `FrontEndSpec` describes either one and is recorded in
every audio-encoder checkpoint; `compute_frame_windows` is the one function that turns a waveform into per-video-frame
windows for any front end, so training features and new driving audio always go through the same code path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Literal, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from jean_nerfstudio.audio.errors import FrontEndError
from jean_nerfstudio.constants import AUDIO_SAMPLE_RATE

__all__ = [
    "BACKBONE_KINDS", "FrontEndError", "FrontEndKind", "FrontEndSpec", "LogMel", "MelSettings", "compute_frame_windows", "frame_windows",
    "normalize_features", "normalize_utterance", "resolve_frontend", "silence_value", "waveform_to_windows",
]


@dataclass(frozen=True)
class MelSettings:
    """Log-mel parameters. Recorded in every dataset and audio-encoder checkpoint; features must match exactly."""

    sample_rate: int = AUDIO_SAMPLE_RATE
    """Input rate in Hz."""
    n_fft: int = 512
    """FFT size in samples."""
    win_length: int = 400
    """Analysis window in samples (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Hop in samples (10 ms at 16 kHz: 100 feature frames per second)."""
    n_mels: int = 80
    """Mel bands."""
    f_min: float = 55.0
    """Lowest band edge in Hz."""
    f_max: float = 7600.0
    """Highest band edge in Hz."""
    log_floor: float = 1e-5
    """Power floor before the log: digital silence maps to log(log_floor)."""
    window_frames: int = 32
    """Feature frames per video-frame window (0.32 s at the default hop)."""

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "MelSettings":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


class LogMel(torch.nn.Module):
    """Waveform -> per-utterance normalized log-mel features.

    >>> frontend = LogMel(MelSettings())
    >>> frontend(torch.zeros(16000)).shape
    torch.Size([101, 80])
    """

    def __init__(self, settings: MelSettings) -> None:
        super().__init__()
        import torchaudio  # deferred: keeps plugin discovery light

        self.settings = settings
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=settings.sample_rate,
            n_fft=settings.n_fft,
            win_length=settings.win_length,
            hop_length=settings.hop_length,
            f_min=settings.f_min,
            f_max=settings.f_max,
            n_mels=settings.n_mels,
            power=2.0,
            center=True,
        )

    def log_mel(self, waveform: Float[Tensor, "samples"]) -> Float[Tensor, "frames n_mels"]:
        """Un-normalized log-mel; frame k is centred on sample k * hop_length."""
        power = self.mel(waveform.float())  # [n_mels, frames]
        return torch.log(power.clamp_min(self.settings.log_floor)).transpose(0, 1).contiguous()

    def forward(self, waveform: Float[Tensor, "samples"]) -> Float[Tensor, "frames n_mels"]:
        return normalize_utterance(self.log_mel(waveform), self.settings.log_floor)


def normalize_utterance(log_mel: Float[Tensor, "frames n_mels"], log_floor: float) -> Float[Tensor, "frames n_mels"]:
    """Per-band mean/variance normalization over the voiced part of an utterance.

    Statistics come from frames above the utterance's quiet level, so long pauses do not drag the mean toward silence.
    """
    energy = log_mel.mean(dim=1)
    threshold = torch.quantile(energy, 0.2) if energy.numel() > 4 else energy.min()
    voiced = log_mel[energy >= threshold]
    if voiced.shape[0] < 2:
        voiced = log_mel
    mean = voiced.mean(dim=0, keepdim=True)
    std = voiced.std(dim=0, keepdim=True).clamp_min(1e-3)
    return (log_mel - mean) / std


def silence_value(log_mel_normalized: Float[Tensor, "frames n_mels"]) -> Float[Tensor, "n_mels"]:
    """The feature vector of the quietest frame: the padding used past the ends of the audio."""
    energy = log_mel_normalized.mean(dim=1)
    return log_mel_normalized[int(torch.argmin(energy))]


def frame_windows(
    features: Float[Tensor, "frames channels"],
    num_video_frames: int,
    video_fps: float,
    feature_rate: float,
    window: int,
    pad_value: Float[Tensor, "channels"] | None = None,
) -> Float[Tensor, "num_video_frames window channels"]:
    """One window of `window` feature frames centred on each video frame's timestamp (frame i at i / video_fps).

    Windows reaching past either end of the audio are padded with `pad_value` (silence), not with repeated speech.

    >>> feats = torch.randn(200, 80)
    >>> frame_windows(feats, num_video_frames=50, video_fps=25.0, feature_rate=100.0, window=32).shape
    torch.Size([50, 32, 80])
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    channels = features.shape[1]
    if pad_value is None:
        pad_value = silence_value(features) if features.shape[0] else torch.zeros(channels)
    half = window // 2
    padded = torch.cat(
        [
            pad_value.to(features).expand(half + 1, channels),
            features,
            pad_value.to(features).expand(window + 1, channels),
        ],
        dim=0,
    )
    centres = torch.round(torch.arange(num_video_frames, dtype=torch.float64) * (feature_rate / video_fps)).long()
    starts = centres - half + (half + 1)  # shift by the front padding
    starts = starts.clamp(0, padded.shape[0] - window)
    index = starts[:, None] + torch.arange(window)[None, :]
    return padded[index]


def waveform_to_windows(
    waveform: np.ndarray | Tensor,
    num_video_frames: int,
    video_fps: float,
    settings: MelSettings,
) -> tuple[Float[Tensor, "frames n_mels"], Float[Tensor, "num_video_frames window n_mels"]]:
    """The whole default front end: waveform -> (normalized log-mel, per-video-frame windows)."""
    wave = torch.as_tensor(np.asarray(waveform), dtype=torch.float32)
    with torch.no_grad():
        mel = LogMel(settings)(wave)
    windows = frame_windows(mel, num_video_frames, video_fps, settings.frames_per_second, settings.window_frames)
    return mel, windows


# ---------------------------------------------------------------------------------------------------------------------
# Any front end: the description recorded in checkpoints, and the one waveform -> windows function.
# ---------------------------------------------------------------------------------------------------------------------
FrontEndKind = Literal["mel", "wav2vec2", "hubert"]
BACKBONE_KINDS = ("wav2vec2", "hubert")


@dataclass(frozen=True)
class FrontEndSpec:
    """Which audio front end turns a waveform into feature windows, with everything needed to reproduce it exactly.

    A spec straight from the command line may leave the backbone's facts open (`feature_dim`, `feature_rate`, `layer`
    = None); `resolve_frontend` fills them in from the loaded backbone, and checkpoints always hold a resolved spec.
    """

    kind: FrontEndKind = "mel"
    """`mel`: normalized log-mel (torchaudio, the dataset's own features); `wav2vec2` / `hubert`: hidden states of a
    frozen transformers speech backbone."""
    mel: MelSettings = field(default_factory=MelSettings)
    """Log-mel parameters (kind `mel`); they must equal the datasets' `mel` settings to reuse their mel_windows."""
    backbone: str = ""
    """Backbone weights (kinds `wav2vec2` / `hubert`): a local directory saved with `save_pretrained`, or a Hugging
    Face model name already in the user's cache (e.g. facebook/hubert-base-ls960)."""
    layer: Optional[int] = None
    """Hidden-state index of the backbone to use (0 = the convolutional features, L = the last transformer layer);
    None: two thirds of the way up, where these models carry the most phonetic content."""
    window_seconds: float = 0.32
    """Window length of a backbone front end in seconds (the mel front end's is `mel.window_frames`)."""
    chunk_seconds: float = 20.0
    """Long audio runs through the backbone in chunks of this length (plus 1 s of context on each side), so memory
    stays bounded for minutes of driving audio."""
    allow_download: bool = False
    """Let transformers download a named backbone that is not in the cache (off: a clear error instead of a hang)."""
    feature_dim: Optional[int] = None
    """Channels C per feature frame (filled in by `resolve_frontend`)."""
    feature_rate: Optional[float] = None
    """Feature frames per second (filled in by `resolve_frontend`)."""

    @property
    def sample_rate(self) -> int:
        return int(self.mel.sample_rate) if self.kind == "mel" else AUDIO_SAMPLE_RATE

    @property
    def window_frames(self) -> int:
        """W: feature frames per video-frame window."""
        if self.kind == "mel":
            return int(self.mel.window_frames)
        if self.feature_rate is None:
            raise ValueError("backbone front end not resolved yet; call resolve_frontend(spec) first")
        return max(1, int(round(self.window_seconds * self.feature_rate)))

    @property
    def is_resolved(self) -> bool:
        return self.feature_dim is not None and self.feature_rate is not None and (self.kind == "mel" or self.layer is not None)

    def to_dict(self) -> Dict[str, Any]:
        values = asdict(self)
        values.pop("allow_download")  # a loading permission, not part of what the features are
        return values

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "FrontEndSpec":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        if isinstance(known.get("mel"), dict):
            known["mel"] = MelSettings.from_dict(known["mel"])
        if known.get("kind", "mel") not in ("mel",) + BACKBONE_KINDS:
            raise FrontEndError(f"unknown audio front end kind {known.get('kind')!r}; known: mel, {', '.join(BACKBONE_KINDS)}")
        return cls(**known)

    def describe(self) -> str:
        if self.kind == "mel":
            return f"log-mel ({self.mel.n_mels} bands, {self.window_frames} frames per window)"
        return f"{self.kind} backbone {self.backbone!r} layer {self.layer} ({self.feature_dim} channels)"


def resolve_frontend(spec: FrontEndSpec) -> FrontEndSpec:
    """Fill in `feature_dim`, `feature_rate` and `layer` (loading the backbone if there is one)."""
    if spec.kind == "mel":
        return replace(spec, feature_dim=int(spec.mel.n_mels), feature_rate=float(spec.mel.frames_per_second))
    from jean_nerfstudio.audio.backbone import backbone_facts, load_backbone

    model = load_backbone(spec.kind, spec.backbone, allow_download=spec.allow_download)
    facts = backbone_facts(model)
    layer = spec.layer if spec.layer is not None else max(1, round(facts.num_layers * 2 / 3))
    if not 0 <= layer <= facts.num_layers:
        raise FrontEndError(f"backbone {spec.backbone!r} has hidden states 0..{facts.num_layers}; --frontend.layer {layer} is out of range")
    return replace(spec, feature_dim=facts.hidden_size, feature_rate=facts.frame_rate, layer=layer)


def compute_frame_windows(
    spec: FrontEndSpec,
    waveform: np.ndarray | Tensor,
    sample_rate: int,
    num_frames: int,
    fps: float,
    device: Optional[torch.device | str] = None,
) -> Float[Tensor, "num_frames window channels"]:
    """Waveform -> one feature window per video frame, for any front end (the NeRF model's and renderer's entry point).

    Args:
        spec: the front end, usually from `load_audio_encoder` (a backbone spec is resolved on the fly if needed).
        waveform: mono samples in [-1, 1], float [num_samples]; sample 0 is the time of video frame 0.
        sample_rate: rate of `waveform` in Hz; it is resampled to the front end's rate when different.
        num_frames: N, the number of video frames to produce windows for (frame i is at time i / fps).
        fps: video frame rate.
        device: where a backbone runs (default CPU); the result is always a CPU tensor.

    Returns:
        float32 [N, W, C] on CPU. For the default mel front end this equals the dataset's `features/mel_windows.npy`
        for the same audio (the same `waveform_to_windows` call that `jean-process` makes).

    >>> compute_frame_windows(FrontEndSpec(), np.zeros(16000, np.float32), 16000, num_frames=25, fps=25.0).shape
    torch.Size([25, 32, 80])
    """
    wave = torch.as_tensor(np.asarray(waveform), dtype=torch.float32).reshape(-1)
    if int(sample_rate) != spec.sample_rate:
        import torchaudio  # deferred: keeps plugin discovery light

        wave = torchaudio.functional.resample(wave, int(sample_rate), spec.sample_rate)
    if spec.kind == "mel":
        return waveform_to_windows(wave, num_frames, fps, spec.mel)[1].float()
    from jean_nerfstudio.audio.backbone import backbone_features, load_backbone

    if not spec.is_resolved:
        spec = resolve_frontend(spec)
    model = load_backbone(spec.kind, spec.backbone, allow_download=spec.allow_download, device=device)
    features, quiet_frame = backbone_features(model, wave, int(spec.layer), chunk_seconds=spec.chunk_seconds)
    if features.shape[1] != spec.feature_dim:
        raise FrontEndError(
            f"backbone {spec.backbone!r} gives {features.shape[1]} channels but the spec records {spec.feature_dim}; "
            "it is not the backbone this encoder was trained with"
        )
    features = normalize_features(features)
    pad = features[quiet_frame] if features.shape[0] else None
    return frame_windows(features, num_frames, fps, float(spec.feature_rate), spec.window_frames, pad_value=pad).float()


def normalize_features(features: Float[Tensor, "frames channels"]) -> Float[Tensor, "frames channels"]:
    """Per-utterance mean/variance normalization of backbone features (the analogue of the mel front end's CMVN)."""
    if features.shape[0] < 2:
        return features - features.mean(dim=0, keepdim=True)
    return (features - features.mean(dim=0, keepdim=True)) / features.std(dim=0, keepdim=True).clamp_min(1e-3)
