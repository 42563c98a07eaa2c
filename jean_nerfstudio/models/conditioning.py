"""Per-frame audio and expression codes for the head field.

Both conditioners turn a *sequence* (audio windows, expression inputs) into one code per frame, and the model gathers
each ray's code by the frame it belongs to. A frame's code depends only on the sequence, never on which other rays
share the batch: the encoders are per-frame (audio) or windowed over the sequence (expression), and no layer
normalizes across the batch.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


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


class TemporalSmoother(nn.Module):
    """Attention over a frame's neighbours' audio features (the anchors' AudioAttNet idea).

    Per-frame audio features jitter; lips move smoothly. A learned, content-dependent weighting of the 2K+1 neighbouring
    frames gives the code of the centre frame.
    """

    def __init__(self, feature_dim: int, num_neighbours: int) -> None:
        super().__init__()
        self.num_neighbours = num_neighbours
        self.score = nn.Sequential(
            nn.Conv1d(feature_dim, 16, kernel_size=3, padding=1),
            nn.LeakyReLU(0.02, inplace=True),
            nn.Conv1d(16, 1, kernel_size=3, padding=1),
        )

    def forward(self, neighbours: Float[Tensor, "batch k feature"]) -> Float[Tensor, "batch feature"]:
        weights = torch.softmax(self.score(neighbours.transpose(1, 2)).squeeze(1), dim=-1)  # [B, k]
        return (weights[..., None] * neighbours).sum(dim=1)


class AudioConditioner(nn.Module):
    """Audio windows of a sequence -> per-frame audio codes.

    Args:
        encoder: windows [M, W, C] -> features [M, E]; has `output_dim`. A stage-1 checkpoint or `MelWindowNet`.
        code_dim: size of the code the head field receives.
        smoothing_frames: K; each code looks at frames t-K..t+K.
        train_encoder: whether gradients reach the encoder (a frozen stage-1 encoder keeps its lip alignment).
    """

    def __init__(self, encoder: nn.Module, code_dim: int, smoothing_frames: int = 4, train_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.train_encoder = train_encoder
        if not train_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        feature_dim = int(getattr(encoder, "output_dim"))
        self.smoothing_frames = smoothing_frames
        self.smoother = TemporalSmoother(feature_dim, 2 * smoothing_frames + 1)
        self.projection = nn.Linear(feature_dim, code_dim)

    def train(self, mode: bool = True) -> "AudioConditioner":
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()  # frozen: keep dropout/normalization in inference behaviour
        return self

    def encode_windows(self, windows: Float[Tensor, "m window channels"]) -> Float[Tensor, "m feature"]:
        if self.train_encoder:
            return self.encoder(windows)
        with torch.no_grad():
            return self.encoder(windows)

    def codes(
        self, windows: Float[Tensor, "frames window channels"], frames: Int[Tensor, "batch"]
    ) -> Float[Tensor, "batch code"]:
        """Codes of `frames` (indices into the sequence `windows`)."""
        offsets = torch.arange(-self.smoothing_frames, self.smoothing_frames + 1, device=frames.device)
        neighbours = (frames[:, None] + offsets[None, :]).clamp(0, windows.shape[0] - 1)  # [B, 2K+1]
        unique, inverse = torch.unique(neighbours, return_inverse=True)
        features = self.encode_windows(windows[unique])[inverse]  # [B, 2K+1, E]
        return self.projection(self.smoother(features))

    def sequence_codes(self, windows: Float[Tensor, "frames window channels"], chunk: int = 512) -> Float[Tensor, "frames code"]:
        """Codes of every frame of a sequence (rendering new audio)."""
        frames = torch.arange(windows.shape[0], device=windows.device)
        return torch.cat([self.codes(windows, f) for f in frames.split(chunk)], dim=0)


class FrameMLPExpressionEncoder(nn.Module):
    """The simple expression encoder: each frame's non-speech expression inputs through a small MLP.

    No temporal context; kept as the light option (and the ablation baseline) next to the transformer.
    """

    def __init__(self, input_dim: int, output_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, output_dim),
        )

    def forward(self, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames out"]:
        return self.net(inputs)


class ExpressionConditioner(nn.Module):
    """Expression inputs of a sequence -> per-frame expression codes.

    Args:
        encoder: inputs [T, F] -> [T, D] (sequence-aware, e.g. the windowed transformer); has `output_dim`.
        code_dim: size of the code the head field receives.
        train_encoder: whether gradients reach the encoder.
        context_frames: how many frames on each side influence a frame's code (the encoder's receptive field);
            used to encode only the needed part of a long sequence. None: always encode the whole sequence.
    """

    def __init__(
        self, encoder: nn.Module, code_dim: int, train_encoder: bool = True, context_frames: Optional[int] = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.train_encoder = train_encoder
        self.context_frames = context_frames
        if not train_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.projection = nn.Linear(int(getattr(encoder, "output_dim")), code_dim)

    def train(self, mode: bool = True) -> "ExpressionConditioner":
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()
        return self

    def encode(self, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames feature"]:
        if self.train_encoder:
            return self.encoder(inputs)
        with torch.no_grad():
            return self.encoder(inputs)

    def codes(self, inputs: Float[Tensor, "frames features"], frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch code"]:
        """Codes of `frames` (indices into the sequence `inputs`)."""
        num = inputs.shape[0]
        if self.context_frames == 0:
            return self.projection(self.encode(inputs[frames]))
        if self.context_frames is None or num <= 4 * self.context_frames + frames.numel():
            return self.projection(self.encode(inputs)[frames])
        # Long sequence: encode one window per requested frame, batched, padding masked out. A frame's code depends
        # only on its window, so this equals encoding the whole sequence.
        r = self.context_frames
        index = frames[:, None] + torch.arange(-r, r + 1, device=frames.device)[None, :]  # [B, 2r+1]
        valid = (index >= 0) & (index < num)
        windows = inputs[index.clamp(0, num - 1)]
        if self.train_encoder:
            encoded = self.encoder(windows, valid=valid)
        else:
            with torch.no_grad():
                encoded = self.encoder(windows, valid=valid)
        return self.projection(encoded[:, r])

    def sequence_codes(self, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames code"]:
        return self.projection(self.encode(inputs))
