"""The two towers of the lip-sync contrastive model: an audio-window encoder and a mouth-motion encoder.

The audio encoder is what the NeRF model consumes; the mouth encoder only exists to teach it (and to score sync at
evaluation time). Neither uses batch statistics (no BatchNorm): an embedding never depends on what else is in the
batch, so a renderer feeding one frame at a time gets exactly what training saw in a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Literal, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Shape of the audio tower. Recorded in the checkpoint; `in_channels` and `window` come from the front end."""

    in_channels: int = 80
    """C: channels per feature frame (mel bands or backbone width)."""
    window: int = 32
    """W: feature frames per window."""
    architecture: Literal["strided", "dilated"] = "dilated"
    """strided: convolution blocks that halve time, then the whole window flattened (position-specific weights);
    dilated: a residual stack of dilated convolutions at full time resolution (weights shared over time, receptive
    field 1 + 2 * sum(dilations) frames), read out at the window's centre (the frame's own time)."""
    channels: Tuple[int, ...] = (128, 128, 192, 256)
    """strided: widths of the blocks, each halving the time axis."""
    width: int = 128
    """dilated: channels of the residual stack."""
    dilations: Tuple[int, ...] = (1, 2, 4, 8)
    """dilated: dilation of each residual block (kernel 3)."""
    centre_frames: int = 4
    """dilated: feature frames averaged at the window's centre (4 mel frames = one video frame at 25 fps)."""
    output_dim: int = 64
    """D: the per-frame conditioning feature the NeRF model reads (`encoder(windows)`)."""
    embed_dim: int = 64
    """E: the contrastive (retrieval) space of `encoder.project(...)`, shared with the mouth tower."""
    dropout: float = 0.2
    """Dropout before the output layer (training only)."""

    def to_dict(self) -> Dict[str, Any]:
        values = asdict(self)
        values["channels"] = list(self.channels)
        values["dilations"] = list(self.dilations)
        return values

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "AudioEncoderConfig":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        for key in ("channels", "dilations"):
            if key in known:
                known[key] = tuple(int(c) for c in known[key])
        return cls(**known)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm(1, C) normalizes each sample on its own (a LayerNorm over channels and time): batch-consistent.
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size=3, padding=1),
        nn.GroupNorm(1, c_out),
        nn.GELU(),
        nn.Conv1d(c_out, c_out, kernel_size=3, stride=2, padding=1),
        nn.GroupNorm(1, c_out),
        nn.GELU(),
    )


class _ChannelNorm(nn.Module):
    """LayerNorm over channels at each time step: local in time (unlike GroupNorm over the window) and per sample."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Float[Tensor, "batch width time"]) -> Float[Tensor, "batch width time"]:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class _DilatedBlock(nn.Module):
    """x + Conv1x1(GELU(ChannelNorm(DilatedConv3(x)))): a residual block that widens the receptive field."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=dilation, dilation=dilation)
        self.norm = _ChannelNorm(width)
        self.mix = nn.Conv1d(width, width, kernel_size=1)

    def forward(self, x: Float[Tensor, "batch width time"]) -> Float[Tensor, "batch width time"]:
        return x + self.mix(F.gelu(self.norm(self.conv(x))))


class AudioEncoder(nn.Module):
    """Audio window [*, W, C] -> per-frame feature [*, D]; `project` maps it into the contrastive space [*, E].

    Both architectures know *where* in the window a sound happens, which is what lets them tell the right mouth window
    from one a few frames away: `strided` by flattening time into position-specific weights, `dilated` (default) by
    reading its time-shared features out at the window's centre. The dilated stack has far fewer position-specific
    parameters, so it memorizes less of a small training set (measured in docs/audio_encoder.md).

    >>> encoder = AudioEncoder(AudioEncoderConfig())
    >>> encoder(torch.randn(7, 32, 80)).shape, encoder.embed(torch.randn(7, 32, 80)).shape
    (torch.Size([7, 64]), torch.Size([7, 64]))
    """

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.architecture == "strided":
            blocks, c_in, length = [], config.in_channels, config.window
            for c_out in config.channels:
                blocks.append(_conv_block(c_in, c_out))
                c_in, length = c_out, (length + 1) // 2
            self.blocks = nn.Sequential(*blocks)
            readout = c_in * length
        elif config.architecture == "dilated":
            width = config.width
            self.blocks = nn.Sequential(
                nn.Conv1d(config.in_channels, width, kernel_size=1),
                *[_DilatedBlock(width, d) for d in config.dilations],
                _ChannelNorm(width),
                nn.GELU(),
            )
            readout = width
            # The window's centre: frame_windows puts the video frame's time at index window // 2.
            centre = config.window // 2
            self._centre = slice(max(0, centre - config.centre_frames // 2), centre - config.centre_frames // 2 + config.centre_frames)
        else:
            raise ValueError(f"unknown audio encoder architecture {config.architecture!r}")
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(readout, config.output_dim)
        # A LayerNorm'd output keeps the conditioning signal at a fixed scale, whatever the audio (and bounds what the
        # adversary's reversed gradient can do to it).
        self.output_norm = nn.LayerNorm(config.output_dim)
        self.projection = nn.Sequential(
            nn.Linear(config.output_dim, config.output_dim), nn.GELU(), nn.Linear(config.output_dim, config.embed_dim)
        )

    @property
    def output_dim(self) -> int:
        """D, the width of `encoder(windows)`."""
        return self.config.output_dim

    @property
    def embed_dim(self) -> int:
        """E, the width of `encoder.project(features)`."""
        return self.config.embed_dim

    def forward(self, windows: Float[Tensor, "*batch window channels"]) -> Float[Tensor, "*batch output_dim"]:
        """Per-frame conditioning features (the NeRF model's input); LayerNorm'd, not unit-length."""
        batch_shape = windows.shape[:-2]
        if tuple(windows.shape[-2:]) != (self.config.window, self.config.in_channels):
            raise ValueError(
                f"audio windows of shape {tuple(windows.shape[-2:])}, this encoder takes "
                f"({self.config.window}, {self.config.in_channels}) (window, channels); use the front end recorded "
                "with it (compute_frame_windows(spec, ...))"
            )
        x = windows.reshape(-1, self.config.window, self.config.in_channels).transpose(1, 2)  # [B, C, W]
        x = self.blocks(x)
        x = x.flatten(1) if self.config.architecture == "strided" else x[:, :, self._centre].mean(dim=2)
        x = self.output_norm(self.output(self.dropout(x)))
        return x.reshape(*batch_shape, self.config.output_dim)

    def project(self, features: Float[Tensor, "*batch output_dim"]) -> Float[Tensor, "*batch embed_dim"]:
        """Unit-length embedding in the space shared with the mouth tower (sync retrieval, offset estimation)."""
        return F.normalize(self.projection(features), dim=-1)

    def embed(self, windows: Float[Tensor, "*batch window channels"]) -> Float[Tensor, "*batch embed_dim"]:
        return self.project(self(windows))


@dataclass(frozen=True)
class MouthEncoderConfig:
    """Shape of the mouth-motion tower (used for training and sync scoring only)."""

    in_features: int = 105
    """F: mouth features per video frame (lip contour offsets + speech blendshapes; see data.MouthFeatureSettings)."""
    window: int = 5
    """T: video frames per mouth window (5 frames = 0.2 s at 25 fps), centred on the frame."""
    hidden: int = 128
    """Width of the per-frame MLP and the temporal convolution."""
    embed_dim: int = 64
    """E: must equal the audio tower's embed_dim."""
    dropout: float = 0.2
    """Dropout before the output layer (training only)."""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "MouthEncoderConfig":
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


class MouthEncoder(nn.Module):
    """Mouth window [*, T, F] -> unit-length embedding [*, E].

    Inputs are divided by `feature_scale` (per-channel spread of the training corpus, a buffer saved with the weights),
    which puts landmark offsets and blendshapes on one scale without per-sample normalization (that would erase how far
    the mouth opens).
    """

    def __init__(self, config: MouthEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_scale", torch.ones(config.in_features))
        self.frame_mlp = nn.Sequential(
            nn.Linear(config.in_features, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
        )
        self.temporal = nn.Sequential(
            nn.Conv1d(config.hidden, config.hidden, kernel_size=3, padding=1), nn.GroupNorm(1, config.hidden), nn.GELU()
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden * config.window, config.embed_dim)

    def forward(self, windows: Float[Tensor, "*batch window features"]) -> Float[Tensor, "*batch embed_dim"]:
        batch_shape = windows.shape[:-2]
        x = windows.reshape(-1, self.config.window, self.config.in_features) / self.feature_scale
        x = self.frame_mlp(x).transpose(1, 2)  # [B, hidden, T]
        x = self.temporal(x).flatten(1)
        x = F.normalize(self.output(self.dropout(x)), dim=-1)
        return x.reshape(*batch_shape, self.config.embed_dim)


@dataclass(frozen=True)
class DisentangleConfig:
    """How the audio feature is kept free of upper-face motion (brows, eyes, blinks).

    Measured on a toy where the input carries the target (tests/test_audio_losses.py): a gradient-reversal adversary on a
    regression target does not remove the information, it re-encodes it (a fresh probe's R^2 rises), because the
    encoder can maximize the adversary's error by encoding the target *differently*. The batch dependence penalties
    remove it. So the default is `decorrelation`; `adversary` is kept for comparison.
    """

    method: Literal["none", "decorrelation", "hsic", "adversary"] = "decorrelation"
    """none; decorrelation: squared cross-correlation between audio-feature and upper-face channels, a moving average
    over batches (removes linearly readable information); hsic: decorrelation + per-batch kernel (RBF) CKA, which also
    catches non-linear dependence but is noisier; adversary: an MLP predicting the upper face through a gradient
    reversal layer."""
    weight: float = 1.0
    """Final weight of the penalty / strength of the reversed gradient (ramped up from 0 as in DANN)."""
    adversary_hidden: int = 64
    """Width of the adversary MLP (method adversary)."""


class UpperFaceAdversary(nn.Module):
    """Audio feature [*, D] -> predicted (per-clip standardized) upper-face channels [*, U] (method adversary)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, features: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        return self.net(features)


@dataclass(frozen=True)
class SyncModelConfig:
    """Both towers and the upper-face disentanglement."""

    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    """The audio tower (its in_channels/window are set from the front end)."""
    mouth: MouthEncoderConfig = field(default_factory=MouthEncoderConfig)
    """The mouth tower (its in_features are set from the data)."""
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)
    """Keeping upper-face motion out of the audio feature."""
