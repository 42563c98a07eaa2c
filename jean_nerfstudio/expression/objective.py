"""The self-supervised objective of the expression encoder, usable every step of `ns-train jean` and in pre-training.

Terms (each returned under its own name, already weighted, nerfstudio style):

- `expression_masked`: masked temporal modelling. Random spans of frames (all channels, or one face region's
  channels) are hidden; a small per-frame decoder must rebuild the hidden entries from the codes of the masked
  sequence, so a code has to summarize the expression around its frame from context (the long-range part).
- `expression_reconstruction`: the codes of the unmasked sequence (the ones the NeRF sees) must rebuild every input
  channel, so they carry brows, eyes, cheeks, smile and the slow mouth expression frame by frame.
- `expression_speech_leak`: the share of variance of the high-pass mouth shape (the top principal components of
  `ExpressionInputs.speech_targets`: speech blendshapes, lip landmarks, lip opening) that a ridge regression from the
  codes explains on held-out frames (cross-fitted between alternating 2 s runs of the sequence), solved in closed form
  and minimized through the codes. An adversary whose best response is computed exactly each step instead of being
  trained alongside: no min-max oscillation, no extra optimizer state. Cross-fitting matters: an in-sample R^2 is
  positive for pure noise (~P/M), and a penalty on it would chase noise at the expense of everything else. With
  `leak_features="quadratic"` the regression also sees the codes' squares.
- `expression_audio_leak`: the same against the lip-aligned audio embeddings of stage 1 (high-passed the same way),
  when the caller has them.
- `expression_smoothness`: squared frame-to-frame code change relative to the code variance (expressions are slow;
  the weight is small because blinks are not).
- `expression_code_scale`: keeps each code dimension's temporal std near 1, a stable scale for the NeRF's input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Tuple, Type

import torch
from jaxtyping import Bool, Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from jean_nerfstudio.expression.encoder import ExpressionEncoder
from jean_nerfstudio.expression.inputs import ExpressionLayout, gaussian_highpass

REFERENCE_FPS = 25.0
"""Frame rate at which the smoothness term is calibrated (frame differences are rescaled to this rate)."""


@dataclass
class ExpressionObjectiveConfig(InstantiateConfig):
    """Loss weights and masking settings of the expression encoder's self-supervised objective."""

    _target: Type = field(default_factory=lambda: ExpressionObjective)
    """Target class to instantiate."""
    mask_ratio: float = 0.35
    """Fraction of frames covered by masked spans."""
    span_seconds: Tuple[float, float] = (0.2, 1.0)
    """Range of masked span lengths, seconds."""
    region_mask_prob: float = 0.5
    """Probability that a span hides one face region's channels (brow, eye, ...) instead of all channels."""
    masked_weight: float = 0.3
    """Weight of the masked-reconstruction loss (hidden entries)."""
    reconstruction_weight: float = 1.0
    """Weight of the reconstruction loss from the clean codes (all entries)."""
    speech_leak_weight: float = 1.0
    """Weight of the closed-form ridge R^2 of the high-pass mouth shape from the codes."""
    audio_leak_weight: float = 1.0
    """Weight of the ridge R^2 of the (high-passed) stage-1 audio embeddings from the codes, when given."""
    leak_features: Literal["linear", "quadratic"] = "linear"
    """Regressors of the leak penalty: the codes, or the codes and their squares."""
    leak_ridge: float = 1e-2
    """Ridge strength of the leak regression, relative to the mean feature energy."""
    leak_components: int = 4
    """The leak regression targets the top principal components of the (standardized) speech targets."""
    leak_fold_seconds: float = 2.0
    """The leak regression is cross-fitted between alternating runs of this length (held-out, not in-sample R^2)."""
    smoothness_weight: float = 0.02
    """Weight of the temporal smoothness term."""
    code_scale_weight: float = 0.05
    """Weight of the per-dimension code-scale term (log std)^2."""
    decoder_hidden_dim: int = 128
    """Hidden width of the per-frame decoder (codes -> standardized inputs)."""


def _source(channel: str) -> str:
    """Where an input channel comes from: `bs`, `blink` or `lm` (a `slow:` prefix is dropped)."""
    return channel.removeprefix("slow:").split(":", 1)[0]


def _centre(x: Tensor, valid: Tensor) -> Tensor:
    """Subtract each sequence's mean over its valid frames; padding rows become zero. x: [B, N, C], valid: [B, N]."""
    w = valid[..., None].to(x.dtype)
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    return (x - mean) * w


def ridge_r2(
    features: Float[Tensor, "samples num_features"],
    targets: Float[Tensor, "samples num_targets"],
    ridge: float = 1e-3,
    fold: Optional[Bool[Tensor, "samples"]] = None,
    standardize: bool = True,
) -> Float[Tensor, ""]:
    """R^2 (pooled over target columns, standardized first unless told not) of the ridge fit targets ~ features.

    With `fold`, the fit is cross-fitted: coefficients from one fold predict the other and vice versa, so the value is
    an unbiased estimate of what a regression could read out of the features (about -P/M when nothing leaks) instead
    of the in-sample value (about +P/M for pure noise, which a penalty would otherwise chase). Both arguments must
    already be centred. Solved in float64 (a P x P system), so it is cheap and stable.
    """
    x = features.double()
    y = targets.double()
    if standardize:
        y = y / y.pow(2).mean(0, keepdim=True).sqrt().clamp_min(1e-12)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def fit(xs: Tensor, ys: Tensor) -> Tensor:
        gram = xs.T @ xs
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        return torch.linalg.solve(gram + lam * eye, xs.T @ ys)

    if fold is None:
        resid = y - x @ fit(x, y)
    else:
        a, b = fold, ~fold
        if int(a.sum()) <= x.shape[1] or int(b.sum()) <= x.shape[1]:
            resid = y - x @ fit(x, y)  # too few frames to split: fall back to the in-sample fit
        else:
            resid = torch.cat([y[b] - x[b] @ fit(x[a], y[a]), y[a] - x[a] @ fit(x[b], y[b])])
    return (1.0 - resid.pow(2).sum() / y.pow(2).sum().clamp_min(1e-12)).float()


def principal_components(targets: Float[Tensor, "samples columns"], k: int) -> Float[Tensor, "samples k"]:
    """The top-k principal component scores of centred targets (columns standardized first), without gradient.

    The leak penalty regresses onto these instead of the raw columns: most of the ~150 mouth-shape columns (lip
    landmark coordinates) are largely tracking noise, and pooled over all of them a real leak of the jaw would be
    diluted below what a held-out regression can detect.
    """
    y = targets.detach().double()
    y = y / y.pow(2).mean(0, keepdim=True).sqrt().clamp_min(1e-12)
    cov = y.T @ y
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return (y @ vecs[:, -min(k, vecs.shape[1]) :]).to(targets.dtype)


def interleaved_folds(valid: Bool[Tensor, "batch num_frames"], block: int) -> Bool[Tensor, "num_valid"]:
    """Two folds of alternating `block`-frame runs (per sequence), for the valid frames in row-major order."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    fold = ((pos // max(1, block)) % 2 == 0)[None].expand_as(valid)
    return fold[valid]


class ExpressionObjective(nn.Module):
    """Self-supervised losses of an `ExpressionEncoder`; holds the decoder (its parameters train with the encoder).

    >>> encoder, objective = build_expression_encoder(inputs)  # checkpoint.py  # doctest: +SKIP
    >>> losses = objective(encoder, inputs.values, inputs.speech_targets)  # doctest: +SKIP
    >>> sorted(losses)  # doctest: +SKIP
    ['expression_code_scale', 'expression_masked', 'expression_reconstruction', 'expression_smoothness',
     'expression_speech_leak']
    """

    def __init__(self, config: ExpressionObjectiveConfig, layout: ExpressionLayout, code_dim: int) -> None:
        super().__init__()
        self.config = config
        self.layout = layout
        input_dim = len(layout.channel_names)
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, config.decoder_hidden_dim),
            nn.GELU(),
            nn.Linear(config.decoder_hidden_dim, config.decoder_hidden_dim),
            nn.GELU(),
            nn.Linear(config.decoder_hidden_dim, input_dim),
        )
        regions = sorted(set(layout.channel_regions))
        self.region_names = regions
        self.register_buffer(
            "channel_region", torch.tensor([regions.index(r) for r in layout.channel_regions], dtype=torch.long)
        )
        # Every (face region, source) group weighs the same in the reconstruction losses, however many channels it
        # has: otherwise the ~100 jittery brow/lid landmark coordinates drown the few brow, blink and smile channels.
        kinds = [f"{region}/{_source(name)}" for name, region in zip(layout.channel_names, layout.channel_regions)]
        kind_names = sorted(set(kinds))
        kind_index = torch.tensor([kind_names.index(k) for k in kinds], dtype=torch.long)
        counts = torch.bincount(kind_index, minlength=len(kind_names)).float()
        self.register_buffer("channel_weight", input_dim / (len(kind_names) * counts[kind_index]))
        self.last_stats: Dict[str, float] = {}
        """Unweighted values of the last call (leak R^2 etc.), detached, for logging."""

    def decode(self, codes: Float[Tensor, "*batch code_dim"]) -> Float[Tensor, "*batch num_channels"]:
        """Codes -> standardized inputs (use `encoder.input_scale`/`input_center` to get raw units back)."""
        return self.decoder(codes)

    def sample_hidden(
        self, valid: Bool[Tensor, "batch num_frames"], fps: float, generator: Optional[torch.Generator] = None
    ) -> Bool[Tensor, "batch num_frames num_channels"]:
        """Random masked spans: per sequence until `mask_ratio` of its valid frames are covered."""
        cfg = self.config
        batch, n = valid.shape
        num_channels = self.channel_region.shape[0]
        hidden = torch.zeros(batch, n, num_channels, dtype=torch.bool)
        region_masks = [(self.channel_region == r).cpu() for r in range(len(self.region_names))]
        lengths = valid.sum(1).tolist()
        lo = max(1, int(round(cfg.span_seconds[0] * fps)))
        hi = max(lo, int(round(cfg.span_seconds[1] * fps)))
        for b in range(batch):
            length = int(lengths[b])
            if length < 2:
                continue
            covered = torch.zeros(n, dtype=torch.bool)
            target = cfg.mask_ratio * length
            for _ in range(4 * length):  # bounded; the ratio is reached long before
                if covered.sum() >= target:
                    break
                span = int(torch.randint(lo, hi + 1, (1,), generator=generator))
                span = min(span, max(1, length // 2))
                start = int(torch.randint(0, max(1, length - span + 1), (1,), generator=generator))
                if float(torch.rand(1, generator=generator)) < cfg.region_mask_prob:
                    region = int(torch.randint(0, len(region_masks), (1,), generator=generator))
                    hidden[b, start : start + span] |= region_masks[region]
                else:
                    hidden[b, start : start + span] = True
                covered[start : start + span] = True
        return hidden.to(valid.device) & valid[..., None]

    def leak_features(self, codes: Tensor, valid: Tensor) -> Tensor:
        """Centred regressors of the leak penalty: [M, D] or [M, 2D] (codes and their centred squares)."""
        feats = _centre(codes, valid)
        if self.config.leak_features == "quadratic":
            feats = torch.cat([feats, _centre(feats.pow(2), valid)], dim=-1)
        return feats[valid]

    def forward(
        self,
        encoder: ExpressionEncoder,
        values: Float[Tensor, "*batch num_frames num_channels"],
        speech_targets: Float[Tensor, "*batch num_frames num_speech"],
        audio_embeddings: Optional[Float[Tensor, "*batch num_frames audio_dim"]] = None,
        valid: Optional[Bool[Tensor, "*batch num_frames"]] = None,
        codes: Optional[Float[Tensor, "*batch num_frames code_dim"]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Tensor]:
        """Weighted losses on one clip's sequence ([N, ...]) or a padded batch ([B, N, ...]).

        Args:
            encoder: the encoder being trained (end to end inside the NeRF, or pre-training).
            values: raw encoder inputs (`ExpressionInputs.values`).
            speech_targets: high-pass mouth shape (`ExpressionInputs.speech_targets`), same frames.
            audio_embeddings: stage-1 lip-aligned audio embeddings of the same frames, or None to skip that term.
            valid: padding mask of a batch (None: all frames valid).
            codes: `encoder(values)` if the caller already computed it (saves one pass); gradients flow through it.
            generator: RNG for the masks (reproducible tests).
        """
        cfg = self.config
        single = values.dim() == 2
        if single:
            values, speech_targets = values[None], speech_targets[None]
            audio_embeddings = audio_embeddings[None] if audio_embeddings is not None else None
            codes = codes[None] if codes is not None else None
            valid = valid[None] if valid is not None else None
        if valid is None:
            valid = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
        else:
            # Padding rows are zeroed: a zero weight does not stop a NaN/inf in padding from poisoning a sum.
            keep = valid[..., None]
            values = torch.where(keep, values, torch.zeros_like(values))
            speech_targets = torch.where(keep, speech_targets, torch.zeros_like(speech_targets))
            if audio_embeddings is not None:
                audio_embeddings = torch.where(keep, audio_embeddings, torch.zeros_like(audio_embeddings))
        if codes is None:
            codes = encoder(values, valid=valid)
        target = encoder.standardize(values)
        weights = valid[..., None].to(values.dtype)
        num_valid_entries = weights.sum().clamp_min(1.0) * values.shape[-1]

        losses: Dict[str, Tensor] = {}
        stats: Dict[str, float] = {}
        channel_weight = self.channel_weight.to(values.dtype)
        recon = ((self.decode(codes) - target).pow(2) * weights * channel_weight).sum() / num_valid_entries
        losses["expression_reconstruction"] = cfg.reconstruction_weight * recon
        stats["reconstruction_mse"] = float(recon.detach())

        if cfg.masked_weight > 0:
            hidden = self.sample_hidden(valid, encoder.fps, generator)
            masked_codes = encoder(values, hidden=hidden, valid=valid)
            hidden_weight = hidden.to(values.dtype) * channel_weight
            sq = (self.decode(masked_codes) - target).pow(2) * hidden_weight
            masked = sq.sum() / hidden_weight.sum().clamp_min(1e-8)
            losses["expression_masked"] = cfg.masked_weight * masked
            stats["masked_mse"] = float(masked.detach())

        feats = self.leak_features(codes, valid)
        # Folds of alternating 2 s runs: neighbouring frames are correlated, so a finer interleave would leak.
        folds = interleaved_folds(valid, int(round(cfg.leak_fold_seconds * encoder.fps)))
        if cfg.speech_leak_weight > 0:
            speech = principal_components(_centre(speech_targets.to(codes.dtype), valid)[valid], cfg.leak_components)
            leak = ridge_r2(feats, speech, cfg.leak_ridge, folds, standardize=False)
            # Only a leak a held-out regression can detect is penalized; below zero is noise, not information.
            losses["expression_speech_leak"] = cfg.speech_leak_weight * leak.clamp_min(0.0)
            stats["speech_leak_r2"] = float(leak.detach())
        if audio_embeddings is not None and cfg.audio_leak_weight > 0:
            audio_hp = gaussian_highpass(audio_embeddings.to(codes.dtype), encoder.fps, self.layout.lowpass_seconds)
            audio_pcs = principal_components(_centre(audio_hp, valid)[valid], cfg.leak_components)
            leak = ridge_r2(feats, audio_pcs, cfg.leak_ridge, folds, standardize=False)
            losses["expression_audio_leak"] = cfg.audio_leak_weight * leak.clamp_min(0.0)
            stats["audio_leak_r2"] = float(leak.detach())

        centred = _centre(codes, valid)
        variance = centred.pow(2).sum((0, 1)) / valid.sum().clamp_min(1)  # [D], pooled over sequences
        if cfg.smoothness_weight > 0 and codes.shape[1] > 1:
            pair = (valid[:, 1:] & valid[:, :-1])[..., None].to(codes.dtype)
            diff = (codes[:, 1:] - codes[:, :-1]).pow(2) * pair
            rate = (encoder.fps / REFERENCE_FPS) ** 2
            smooth = rate * diff.sum() / (pair.sum().clamp_min(1) * variance.sum().clamp_min(1e-8))
            losses["expression_smoothness"] = cfg.smoothness_weight * smooth
            stats["smoothness"] = float(smooth.detach())
        if cfg.code_scale_weight > 0:
            scale = 0.5 * variance.clamp_min(1e-8).log()  # log std per dimension
            losses["expression_code_scale"] = cfg.code_scale_weight * scale.pow(2).mean()
        self.last_stats = stats
        return losses
