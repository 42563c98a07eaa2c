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

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
from jean_nerfstudio.audio.mouth_prior import MouthPrior, column_correlation
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


class MouthReadout(nn.Module):
    """A ridge map from a frame's audio features (with its neighbours') to its speech-driven mouth geometry.

    The head's own audio path, trained by the photometric loss on one clip, learns to use the audio code as a frame
    code: on new speech the mouth does not follow. A map with too little capacity to memorize frames does generalize:
    on two speakers the shipped encoder never heard, this readout's predicted inner-lip gap follows unseen-language
    speech (best-lag r with the speech-band envelope 0.65-0.85 at lag 0, against the real videos' own 0.44/0.56;
    `benchmarks/mouth_from_audio.py`). Fitted in closed form when the model is built (the encoder is frozen).
    Regularization is chosen per column by contiguous-block cross-validation on the training frames, scored by squared
    error (R^2), since the head consumes the predicted values themselves. With a `prior` (the audio checkpoint's corpus
    map, `audio.mouth_prior`) the map is shrunk towards that prior, rescaled to the clip's spread, instead of towards
    zero: a clip of a few seconds then borrows from many speakers, a long one overrules them. With `restore_spread`
    the prediction's spread is restored to the targets' (ridge shrinks it), so the mouth opens as far as the speaker's.
    """

    ridges = (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)

    def __init__(self, neighbours: Float[Tensor, "frames k feature"], targets: Float[Tensor, "frames columns"],
                 train_frames: Int[Tensor, "n"], folds: int = 5, restore_spread: bool = True,
                 prior: Optional[MouthPrior] = None, columns: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        x = neighbours[train_frames].flatten(1).double()
        y = targets[train_frames].double()
        # Centred on the clip; scaled as the prior's features were (so its weights apply), else by the clip's spread.
        mean = x.mean(0)
        scale = prior.feature_scale.double() if prior is not None else x.std(0) + 1e-6
        z = (x - mean) / scale
        y_mean = y.mean(0)
        # The prior's map in this clip's units (its outputs are in units of each column's spread); zero without one
        # and for the columns it does not predict (matched by name when `columns` are given).
        anchor = torch.zeros(z.shape[1], y.shape[1], dtype=z.dtype)
        if prior is not None:
            prior_weights = prior.weights if columns is None else prior.weights_for(columns)
            anchor = prior_weights.double() * y.std(0).clamp_min(1e-9)
        blocks = torch.arange(len(y)).tensor_split(folds)

        def solve(rows: Tensor, ridge: float) -> Tensor:
            zr = z[rows]
            gram = zr.T @ zr + ridge * torch.eye(z.shape[1], dtype=z.dtype)
            return torch.linalg.solve(gram, zr.T @ (y[rows] - y[rows].mean(0)) + ridge * anchor)

        # Each block predicted by the map fitted on the others: the part the weights make (per ridge), the intercept.
        offset = torch.empty_like(y)
        varying_by_ridge = torch.empty(len(self.ridges), *y.shape, dtype=y.dtype)
        for block in blocks:
            rest = torch.ones(len(y), dtype=torch.bool)
            rest[block] = False
            offset[block] = y[rest].mean(0)
            for r, ridge in enumerate(self.ridges):
                varying_by_ridge[r, block] = z[block] @ solve(rest.nonzero()[:, 0], ridge)
        error = ((varying_by_ridge + offset - y) ** 2).sum(1)  # [ridges, columns]
        cv_r2 = 1 - error / ((y - y_mean) ** 2).sum(0).clamp_min(1e-18)
        choice = cv_r2.argmax(0)  # per column
        columns = torch.arange(y.shape[1])
        varying = varying_by_ridge[choice, :, columns].T  # [n, columns]
        self.ridge = tuple(float(self.ridges[c]) for c in choice)
        self.cv_r2 = tuple(float(v) for v in cv_r2[choice, columns])
        self.cv_correlation = float(column_correlation(varying + offset, y).mean())
        self.with_prior = prior is not None
        if restore_spread:
            gain = (y.std(0) / (varying + offset).std(0).clamp_min(1e-9)).clamp(1.0, 3.0)
        else:  # the plain ridge estimate: the expected geometry given the audio, shrunk where unsure
            gain = torch.ones(y.shape[1], dtype=y.dtype)
        everything = torch.arange(len(y))
        fits = {ridge: solve(everything, ridge) for ridge in set(self.ridge)}
        weights = torch.stack([fits[ridge][:, c] for c, ridge in enumerate(self.ridge)], dim=1) * gain
        self.register_buffer("mean", mean.float(), persistent=False)
        self.register_buffer("scale", scale.float(), persistent=False)
        self.register_buffer("weights", weights.float(), persistent=False)
        self.register_buffer("intercept", y_mean.float(), persistent=False)
        # What the readout says about each training frame when that frame was NOT among those it was fitted on (with
        # the same spread gain): the error it makes on held-out frames and new audio, shown to the head in training.
        self.register_buffer("out_of_fold", (varying * gain + offset).float(), persistent=False)

    def forward(self, neighbours: Float[Tensor, "batch k feature"]) -> Float[Tensor, "batch columns"]:
        return (neighbours.flatten(1) - self.mean) / self.scale @ self.weights + self.intercept


class AudioConditioner(nn.Module):
    """The model's audio source: the clip's audio windows -> per-frame audio codes, and the same for new audio.

    Args:
        source: the clip's windows, the encoder (windows [M, W, C] -> features [M, E], with `output_dim`; a stage-1
            checkpoint or `MelWindowNet`) and the front end that made the windows.
        code_dim: size of the code the head field receives.
        smoothing_frames: K; each code looks at frames t-K..t+K.
        train_encoder: whether gradients reach the encoder (a frozen stage-1 encoder keeps its lip alignment).
        mouth_targets: with a frozen encoder, route the audio through the speech-driven mouth geometry ([frames,
            columns], the clip's own): training codes come from the frames' measured geometry, every other code (held
            out, new audio, silence) from the `MouthReadout` of the audio; None: the learned audio path.
        train_frames: the training frames the readout is fitted on (with `mouth_targets`).
        predicted_fraction: with `mouth_targets`, the share of training rays whose code comes from the readout's
            out-of-fold prediction of their frame instead of its measured geometry (so the head also learns what the
            mouth looks like given a prediction as imperfect as the one held-out frames and new audio get).
        restore_mouth_spread: scale the readout so its predictions spread as much as the measured geometry.
        mouth_columns: names of the geometry's columns (with `mouth_targets`), to match them with the prior's.
        use_mouth_prior: shrink the readout towards the audio checkpoint's corpus map (`source.mouth_prior`) where it
            has one that fits these columns and neighbours.
    """

    min_mouth_scale = 1e-3
    """Floor of the geometry's standardizing spread, in eye distances (a still mouth's tracking noise is about this)."""

    def __init__(
        self,
        source: AudioSource,
        code_dim: int,
        smoothing_frames: int = 4,
        train_encoder: bool = True,
        mouth_targets: Optional[Float[Tensor, "frames columns"]] = None,
        train_frames: Optional[Int[Tensor, "n"]] = None,
        predicted_fraction: float = 0.0,
        restore_mouth_spread: bool = True,
        mouth_columns: Optional[List[str]] = None,
        use_mouth_prior: bool = True,
    ) -> None:
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
        self.mouth_readout: Optional[MouthReadout] = None
        self.mouth_columns: List[str] = list(mouth_columns or []) if mouth_targets is not None else []
        if mouth_targets is not None:
            if train_encoder:
                raise ValueError("the mouth-geometry audio path needs a frozen stage-1 audio encoder "
                                 "(audio_encoder_checkpoint shipped or a file, audio_encoder_mode frozen)")
            frames = torch.arange(self.num_frames)
            train_frames = torch.as_tensor(train_frames, dtype=torch.long)
            with torch.no_grad():
                features = torch.cat([self.encode_windows(w) for w in self.windows.split(512)])
            prior = source.mouth_prior if use_mouth_prior else None
            if prior is not None and not prior.fits(smoothing_frames, mouth_columns or [], feature_dim):
                prior = None  # another landmark layout or context than the corpus map's: the clip's own map only
            self.mouth_readout = MouthReadout(features[self._neighbour_index(frames, self.num_frames)],
                                              mouth_targets, train_frames, restore_spread=restore_mouth_spread,
                                              prior=prior, columns=mouth_columns)
            self.register_buffer("mouth_targets", mouth_targets.float(), persistent=False)
            # The geometry reaches the projection standardized by the training frames' spread: speakers' speech-driven
            # lip gaps differ several-fold (obama_2 std 0.026 of the eye distance, mimictalk_german_20s 0.008), and raw
            # values that small barely move a default-initialized layer, so the head never learned that speaker's mouth.
            # The floor keeps a nearly still mouth's tracking noise from being blown up to unit spread.
            train_geometry = mouth_targets[train_frames].float()
            self.register_buffer("mouth_center", train_geometry.mean(0), persistent=False)
            self.register_buffer("mouth_scale", train_geometry.std(0).clamp_min(self.min_mouth_scale), persistent=False)
            predicted = mouth_targets.float().clone()
            predicted[train_frames] = self.mouth_readout.out_of_fold
            self.register_buffer("mouth_predicted", predicted, persistent=False)
            self.predicted_fraction = float(predicted_fraction)
            columns = mouth_targets.shape[1]
            self.mouth_projection = nn.Sequential(nn.Linear(columns, 64), nn.ReLU(inplace=True), nn.Linear(64, code_dim))

    @property
    def num_frames(self) -> int:
        return int(self.windows.shape[0])

    def geometry_code(self, geometry: Float[Tensor, "batch columns"]) -> Float[Tensor, "batch code"]:
        """The code of a speech-driven mouth geometry (measured or read out from audio), in the clip's own units."""
        return self.mouth_projection((geometry - self.mouth_center) / self.mouth_scale)

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
        if self.mouth_readout is not None:
            return self.geometry_code(self.readout_geometry(windows, frames))
        return self.projection(self.smoother(self.neighbour_features(windows, frames)))

    def neighbour_features(
        self, windows: Float[Tensor, "frames window channels"], frames: Int[Tensor, "batch"]
    ) -> Float[Tensor, "batch k feature"]:
        """Encoder features of each frame's 2K+1 neighbours in `windows` (each distinct window encoded once)."""
        neighbours = self._neighbour_index(frames, windows.shape[0])  # [B, 2K+1]
        unique, inverse = torch.unique(neighbours, return_inverse=True)
        return self.encode_windows(windows[unique])[inverse]

    def readout_geometry(
        self, windows: Float[Tensor, "frames window channels"], frames: Int[Tensor, "batch"]
    ) -> Float[Tensor, "batch columns"]:
        """The speech-driven mouth geometry the readout predicts from the audio of `frames` (in the clip's units)."""
        if self.mouth_readout is None:
            raise ValueError("readout_geometry needs the mouth-geometry audio path (audio_through_mouth_geometry)")
        return self.mouth_readout(self.neighbour_features(windows, frames))

    def _neighbour_index(self, frames: Int[Tensor, "batch"], length: int) -> Int[Tensor, "batch k"]:
        offsets = torch.arange(-self.smoothing_frames, self.smoothing_frames + 1, device=frames.device)
        return (frames[:, None] + offsets[None, :]).clamp(0, length - 1)

    def frame_codes(self, frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch code"]:
        """Codes of frames of the clip (in training, through the mouth geometry measured on them, when that path is
        on: the head learns what each mouth shape looks like, and the readout says which shape the audio makes)."""
        if self.mouth_readout is not None and self.training:
            geometry = self.mouth_targets[frames]
            if self.predicted_fraction > 0:
                predicted = torch.rand(frames.shape, device=frames.device) < self.predicted_fraction
                geometry = torch.where(predicted[:, None], self.mouth_predicted[frames], geometry)
            return self.geometry_code(geometry)
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


def _forget_clip_features(module: "ExpressionConditioner", _incompatible_keys) -> None:
    """After new weights are loaded, the clip's cached encoder outputs are stale (a module-level function, not a
    lambda, so the module still pickles)."""
    module._clip_features = None


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
            self.encoder.eval()
        self.projection = nn.Linear(int(getattr(self.encoder, "output_dim")), code_dim)
        # A frozen encoder gives every clip frame the same output all run long: the clip is encoded once and each
        # batch looks its frames up (training draws codes for hundreds of frames a batch: jitter, mouth shuffles).
        # Not state: rebuilt on another device, and after loading weights.
        self._clip_features: Optional[Tensor] = None
        self.register_load_state_dict_post_hook(_forget_clip_features)

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
        return self.projection(self.encoded(inputs, frames))

    def encoded(self, inputs: Float[Tensor, "frames features"], frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch feature"]:
        """The encoder's output at `frames` of the sequence `inputs` (before the projection to the code)."""
        num = inputs.shape[0]
        if self.context_frames == 0:
            return self.encode(inputs[frames])
        if self.context_frames is None or num <= 4 * self.context_frames + frames.numel():
            return self.encode(inputs)[frames]
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
        return encoded[:, r]

    def frame_codes(self, frames: Int[Tensor, "batch"]) -> Float[Tensor, "batch code"]:
        """Codes of frames of the clip."""
        if self.train_encoder:
            return self.codes(self.inputs, frames)
        return self.projection(self.clip_features()[frames])

    def clip_features(self, chunk: int = 512) -> Float[Tensor, "frames feature"]:
        """The frozen encoder's output at every frame of the clip, encoded once (in chunks of frames, each with its
        window, so memory stays bounded for long clips)."""
        cached = self._clip_features
        if cached is None or cached.device != self.inputs.device:
            every = torch.arange(self.num_frames, device=self.inputs.device)
            with torch.no_grad():
                # float32 whatever autocast is active: the cache outlives the context it was built in
                cached = torch.cat([self.encoded(self.inputs, part).float() for part in every.split(chunk)])
            self._clip_features = cached
        return cached

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
