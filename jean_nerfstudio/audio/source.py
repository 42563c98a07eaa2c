"""The audio source of a head: one processed clip's per-frame audio windows, the encoder that reads them, and the
front end that makes windows of any new waveform the same way.

`build_audio_source` is the audio package's one factory for the NeRF model. With a stage-1 checkpoint (`jean-train-audio`
or the shipped one) the windows come from the checkpoint's own front end; without one they are the dataset's log-mel
windows and the encoder is a fresh `MelWindowNet` that trains with the head. Either way the front end is described by
one `FrontEndSpec`, so new driving audio goes through exactly the code path the training clip's audio went through:

>>> source = build_audio_source(clip, checkpoint=None)  # doctest: +SKIP
>>> source.windows.shape, source.frontend.kind  # doctest: +SKIP
(torch.Size([N, 32, 80]), 'mel')
>>> compute_frame_windows(source.frontend, waveform_16k, 16000, num_frames=50, fps=25.0).shape  # doctest: +SKIP
torch.Size([50, 32, 80])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import FrontEndSpec, MelSettings, compute_frame_windows
from jean_nerfstudio.audio.mouth_prior import MouthPrior
from jean_nerfstudio.contract import ProcessedClip


class MelWindowNet(nn.Module):
    """The per-subject fallback audio encoder: a small temporal CNN over one log-mel window.

    Used when no stage-1 (lip-aligned, multi-speaker) audio encoder checkpoint is given; it is trained with the head.

    >>> net = MelWindowNet(channels=80, window=32)
    >>> net(torch.randn(7, 32, 80)).shape
    torch.Size([7, 64])
    """

    def __init__(self, channels: int, window: int, output_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        layers: list[nn.Module] = []
        in_ch, length = channels, window
        while length > 2:
            layers += [nn.Conv1d(in_ch, hidden, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.02, inplace=True)]
            in_ch, length = hidden, (length + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(hidden * length if layers else channels * window, output_dim)

    def forward(self, windows: Float[Tensor, "batch window channels"]) -> Float[Tensor, "batch out"]:
        h = self.conv(windows.transpose(1, 2))  # [B, hidden, L]
        return self.out(h.flatten(1))


@dataclass
class AudioSource:
    """A clip's audio windows, the encoder that turns one window into a feature vector, and their front end."""

    windows: Float[Tensor, "frames window channels"]
    """One window per video frame of the clip."""
    silence_window: Float[Tensor, "window channels"]
    """The window of a frame in digital silence (the viewer's "muted", the fast renderer's occupancy probes)."""
    encoder: nn.Module
    """windows [M, W, C] -> features [M, E]; has `output_dim`."""
    frontend: FrontEndSpec
    """How a waveform becomes windows (the checkpoint's front end, or the dataset's mel settings)."""
    pretrained: bool
    """True for a stage-1 checkpoint, False for the per-subject `MelWindowNet` (which must train with the head)."""
    mouth_prior: Optional[MouthPrior] = None
    """The stage-1 checkpoint's corpus map from its features to the speech-driven mouth geometry, if it has one."""


def silence_window(frontend: FrontEndSpec, fps: float) -> Float[Tensor, "window channels"]:
    """The window of one frame in the middle of a second of digital silence."""
    num_frames = max(int(round(fps)), 1)
    silence = np.zeros(C.AUDIO_SAMPLE_RATE, dtype=np.float32)
    return compute_frame_windows(frontend, silence, C.AUDIO_SAMPLE_RATE, num_frames, fps)[num_frames // 2]


def build_audio_source(clip: ProcessedClip, checkpoint: Optional[Union[Path, str]]) -> AudioSource:
    """The audio source of `clip`.

    Args:
        clip: the processed training clip.
        checkpoint: a stage-1 checkpoint (`jean-train-audio`), `shipped` (the packaged one), or None/`none` for the
            dataset's own log-mel windows read by a fresh `MelWindowNet`.
    """
    from jean_nerfstudio.weights import resolve_checkpoint

    path = resolve_checkpoint(checkpoint, "audio")
    if path is None:
        # The dataset's windows were computed by `jean-process` with these settings; reading them back is exact and
        # saves a second mel pass over the whole clip.
        windows = torch.from_numpy(np.ascontiguousarray(clip.feature("mel_windows"), dtype=np.float32))
        frontend = FrontEndSpec(kind="mel", mel=MelSettings.from_dict(clip.metadata["mel"]))
        encoder: nn.Module = MelWindowNet(channels=windows.shape[2], window=windows.shape[1])
        pretrained = False
        mouth_prior = None
    else:
        from jean_nerfstudio.audio.checkpoint import audio_encoder_from, mouth_prior_from, read_checkpoint
        from jean_nerfstudio.audio.io import decode_audio

        payload = read_checkpoint(path)  # once: the encoder and its corpus mouth prior both live in it
        encoder, frontend = audio_encoder_from(payload, path, device="cpu")
        mouth_prior = mouth_prior_from(payload, path)
        waveform = decode_audio(clip.audio_path).waveform
        windows = compute_frame_windows(frontend, waveform, C.AUDIO_SAMPLE_RATE, clip.num_frames, clip.fps)
        pretrained = True
    return AudioSource(
        windows=windows.float(),
        silence_window=silence_window(frontend, clip.fps),
        encoder=encoder,
        frontend=frontend,
        pretrained=pretrained,
        mouth_prior=mouth_prior,
    )
