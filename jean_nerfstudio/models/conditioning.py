"""Per-frame audio and expression codes for the head field: the model's two sources.

Each conditioner holds one encoder package's source record (`audio.source.AudioSource`,
`expression.source.ExpressionSource`): the clip's sequence (audio windows, expression inputs) as a buffer that follows
the model's device, the encoder, and what makes the same sequence from new material (a waveform's windows, another
clip's inputs). Both turn a *sequence* into one code per frame, and the model gathers each ray's code by the frame it
belongs to. A frame's code depends only on the sequence, never on which other rays share the batch: the encoders are
per-frame (audio) or windowed over the sequence (expression), and no layer normalizes across the batch.

Only the encoders and the small heads here have parameters; their state-dict names (`audio.encoder.*`,
`audio.smoother.*`, `audio.projection.*`, `expression.encoder.*`, `expression.projection.*`) are those of every trained
run, so checkpoints keep loading. The sequences are non-persistent buffers (rebuilt from the dataset at load).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
from jean_nerfstudio.audio.source import AudioSource
from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.source import ExpressionSequence, ExpressionSource


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
    """The model's audio source: the clip's audio windows -> per-frame audio codes, and the same for new audio.

    Args:
        source: the clip's windows, the encoder (windows [M, W, C] -> features [M, E], with `output_dim`; a stage-1
            checkpoint or `MelWindowNet`) and the front end that made the windows.
        code_dim: size of the code the head field receives.
        smoothing_frames: K; each code looks at frames t-K..t+K.
        train_encoder: whether gradients reach the encoder (a frozen stage-1 encoder keeps its lip alignment).
    """

    def __init__(self, source: AudioSource, code_dim: int, smoothing_frames: int = 4, train_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = source.encoder
        self.frontend: FrontEndSpec = source.frontend
        self.register_buffer("windows", source.windows, persistent=False)  # [N, W, C]
        self.register_buffer("silence_window", source.silence_window, persistent=False)  # [W, C]
        self.train_encoder = train_encoder
        if not train_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        feature_dim = int(getattr(self.encoder, "output_dim"))
        self.smoothing_frames = smoothing_frames
        self.smoother = TemporalSmoother(feature_dim, 2 * smoothing_frames + 1)
        self.projection = nn.Linear(feature_dim, code_dim)

    @property
    def num_frames(self) -> int:
        return int(self.windows.shape[0])

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

    def frame_codes(self, frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch code"]:
        """Codes of frames of the clip."""
        return self.codes(self.windows, frames)

    def sequence_codes(self, windows: Float[Tensor, "frames window channels"], chunk: int = 512) -> Float[Tensor, "frames code"]:
        """Codes of every frame of a sequence (rendering new audio)."""
        frames = torch.arange(windows.shape[0], device=windows.device)
        return torch.cat([self.codes(windows, f) for f in frames.split(chunk)], dim=0)

    def windows_for(
        self, waveform: Float[np.ndarray, "samples"], num_frames: int, fps: float
    ) -> Float[Tensor, "frames window channels"]:
        """Per-video-frame windows of any 16 kHz mono waveform, through the clip's own front end (on the model's
        device)."""
        windows = compute_frame_windows(self.frontend, waveform, C.AUDIO_SAMPLE_RATE, num_frames, fps)
        return windows.to(self.windows.device)

    def waveform_codes(self, waveform: Float[np.ndarray, "samples"], num_frames: int, fps: float) -> Float[Tensor, "frames code"]:
        """Codes of `num_frames` video frames at `fps` of a 16 kHz mono waveform (exactly as for the clip's audio)."""
        return self.sequence_codes(self.windows_for(waveform, num_frames, fps))

    def silence_code(self) -> Float[Tensor, "1 code"]:
        """The code of a frame in digital silence (every neighbour silent too)."""
        k = self.smoothing_frames
        silence = self.silence_window[None].expand(2 * k + 1, -1, -1)
        return self.codes(silence, torch.tensor([k], device=silence.device))


class ExpressionConditioner(nn.Module):
    """The model's expression source: the clip's expression inputs -> per-frame expression codes; edits of them;
    another clip's inputs (expression transfer).

    Args:
        source: the clip's inputs, the encoder (inputs [T, F] -> [T, D], sequence-aware for the transformer; with
            `output_dim`), its receptive field, layout, edits and the builder of another clip's inputs.
        code_dim: size of the code the head field receives.
        train_encoder: whether gradients reach the encoder.
    """

    def __init__(self, source: ExpressionSource, code_dim: int, train_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = source.encoder
        self.register_buffer("inputs", source.inputs, persistent=False)  # [N, F]
        self.fps = float(source.fps)
        # What the inputs are (another clip must match it to drive this model) and the viewer's named edits of them.
        self.layout: Dict[str, object] = dict(source.layout)
        self.control_names: List[str] = list(source.controls)
        self._editor = source.editor
        self._sequence_of = source.sequence_of
        self.train_encoder = train_encoder
        # How many frames on each side influence a frame's code: used to encode only the needed part of a long
        # sequence (0: per-frame).
        self.context_frames: Optional[int] = source.context_frames
        if not train_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.projection = nn.Linear(int(getattr(self.encoder, "output_dim")), code_dim)

    @property
    def num_frames(self) -> int:
        return int(self.inputs.shape[0])

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

    def frame_codes(self, frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch code"]:
        """Codes of frames of the clip."""
        return self.codes(self.inputs, frames)

    def sequence_codes(self, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames code"]:
        """Codes of every frame of a sequence, encoded whole."""
        return self.projection(self.encode(inputs))

    def clip_sequence(self) -> ExpressionSequence:
        """The clip's own inputs and their fps."""
        return ExpressionSequence(self.inputs, self.fps)

    def neutral_inputs(self, num_frames: int) -> Float[Tensor, "frames features"]:
        """The clip's median expression, held for `num_frames` frames."""
        return self.inputs.median(dim=0, keepdim=True).values.expand(num_frames, -1)

    def edited(self, inputs: Float[Tensor, "frames features"], amounts: Mapping[str, float]) -> Float[Tensor, "frames features"]:
        """`inputs` with the named edits applied ({control: amount}); unchanged when the layout has no named edits."""
        amounts = {k: v for k, v in amounts.items() if abs(v) > 1e-6}
        if not amounts or self._editor is None:
            return inputs
        return self._editor(inputs, amounts)

    def sequence_of(self, clip: ProcessedClip) -> ExpressionSequence:
        """Another processed clip's inputs in this layout, with the fps they are at (expression transfer).

        Raises:
            DatasetError: its landmark layout or channel count differs from the clip's.
            ExpressionLayoutError: (transformer) its channel layout differs from the encoder's.
        """
        sequence = self._sequence_of(clip)
        return ExpressionSequence(sequence.values.to(self.inputs.device), sequence.fps)
