"""A corpus prior for the head's mouth readout: audio features -> speech-driven mouth geometry, fitted across speakers.

The head reads each frame's speech-driven mouth geometry (high-pass inner-lip gaps and mouth width,
`models.jean_model.speech_mouth_geometry`) from the frozen stage-1 features with a ridge map fitted on its one clip
(`models.conditioning.MouthReadout`). Fitted on a few seconds, that map is noisy. This module fits the same kind of map
on every frame of the pre-training clips, each clip's geometry in units of its own spread (speakers' mouths move
several-fold differently), and `MouthReadout` shrinks the clip's own map towards it rather than towards zero, by as
much as cross-validation on the clip says. On six clips of speakers outside pre-training
(`benchmarks/pooled_mouth_readout.py`, each clip's five contiguous blocks predicted by readouts fitted on the rest),
the lip-gap R^2 stayed within 0.01 on the four clips of 20-30 s and rose on the two short ones (5 s: 0.02 -> 0.12;
10 s: -0.01 -> 0.20); mean 0.25 -> 0.30 (mouth width 0.28 -> 0.33).

It belongs to one audio encoder (it reads that encoder's features), so `jean-pretrain` stores it inside the audio
checkpoint, under the optional key `mouth_prior` (`audio.checkpoint.add_mouth_prior`); a checkpoint without it gives
the readout no prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

RIDGES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
"""Regularization strengths tried by the leave-clips-out cross-validation."""


@dataclass
class MouthPrior:
    """The corpus map. Features are standardized by the corpus's own mean and scale; the map's outputs are in units
    of a clip's spread of each geometry column (so a clip rescales them by its own)."""

    context_frames: int
    """K: the map reads the features of frames t-K..t+K (the head's `audio_smoothing_frames`)."""
    columns: List[str]
    """Names of the geometry columns it predicts (`ExpressionLayout.speech_target_names`, `hp:geom:*`)."""
    feature_mean: Float[Tensor, "inputs"]
    feature_scale: Float[Tensor, "inputs"]
    weights: Float[Tensor, "inputs columns"]
    ridge: float
    """The strength chosen by leave-clips-out cross-validation."""
    cv_correlation: float
    """Mean over columns of the correlation of the left-out clips' predictions with their geometry."""
    clips: List[str]
    """The clips it was fitted on (names only)."""
    frames: int

    def to_dict(self) -> Dict[str, Any]:
        return {
            "context_frames": self.context_frames, "columns": list(self.columns),
            "feature_mean": self.feature_mean.float().clone(), "feature_scale": self.feature_scale.float().clone(),
            "weights": self.weights.float().clone(), "ridge": float(self.ridge),
            "cv_correlation": float(self.cv_correlation), "clips": list(self.clips), "frames": int(self.frames),
        }

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "MouthPrior":
        return cls(
            context_frames=int(values["context_frames"]), columns=[str(c) for c in values["columns"]],
            feature_mean=values["feature_mean"].float(), feature_scale=values["feature_scale"].float(),
            weights=values["weights"].float(), ridge=float(values["ridge"]),
            cv_correlation=float(values["cv_correlation"]), clips=[str(c) for c in values["clips"]],
            frames=int(values["frames"]),
        )

    def fits(self, context_frames: int, columns: Sequence[str], feature_dim: int) -> bool:
        """Whether it applies to a readout of these neighbours and columns: the same context, and every column it
        predicts among `columns` (another landmark layout or context: no). Further columns (`hp:shape:*`, which are
        each clip's own components and so have no corpus map) are read out without it."""
        return (context_frames == self.context_frames and set(self.columns) <= set(columns)
                and feature_dim * (2 * context_frames + 1) == self.weights.shape[0])

    def weights_for(self, columns: Sequence[str]) -> Float[Tensor, "inputs columns"]:
        """Its map laid out for a readout of `columns` (in that order): zero for the columns it does not predict."""
        own = {name: i for i, name in enumerate(self.columns)}
        laid_out = torch.zeros(self.weights.shape[0], len(columns), dtype=self.weights.dtype)
        for c, name in enumerate(columns):
            if name in own:
                laid_out[:, c] = self.weights[:, own[name]]
        return laid_out


def context_stack(features: Float[np.ndarray, "frames feature"], context: int) -> Float[np.ndarray, "frames inputs"]:
    """Each frame's features next to its `context` neighbours' on each side (edges repeated), flattened, in the order
    `AudioConditioner.neighbour_features(...).flatten(1)` gives them."""
    n = len(features)
    index = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None], 0, n - 1)
    return features[index].reshape(n, -1)


def column_correlation(a: Float[Tensor, "frames columns"], b: Float[Tensor, "frames columns"]) -> Float[Tensor, "columns"]:
    """Pearson correlation of each column of `a` with the same column of `b` (0 where either is constant)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)


def _solve(z: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    zc, yc = z - z.mean(0), y - y.mean(0)
    return np.linalg.solve(zc.T @ zc + ridge * np.eye(z.shape[1]), zc.T @ yc)


def fit_mouth_prior(
    features: Sequence[Float[np.ndarray, "frames feature"]],
    geometry: Sequence[Float[np.ndarray, "frames columns"]],
    names: Sequence[str],
    columns: Sequence[str],
    context_frames: int = 4,
    folds: int = 5,
    seed: int = 0,
) -> MouthPrior:
    """Fit the corpus map on clips' frozen-encoder features and speech-driven mouth geometry (frames where the face
    was found), choosing the ridge by cross-validation over groups of whole clips (a map that had seen the test clip's
    speaker would look better than it is on a new one)."""
    if len(features) < 2:
        raise ValueError(f"a mouth prior needs at least 2 clips (got {len(features)})")
    xs, ys, groups = [], [], []
    for k, (f, y) in enumerate(zip(features, geometry)):
        xs.append(context_stack(np.asarray(f, dtype=np.float64), context_frames))
        y = np.asarray(y, dtype=np.float64)
        ys.append((y - y.mean(0)) / np.maximum(y.std(0), 1e-3))
        groups.append(np.full(len(y), k))
    x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    held = np.array_split(np.random.default_rng(seed).permutation(len(features)), min(folds, len(features)))
    best = None
    for ridge in RIDGES:
        predicted = np.zeros_like(y)
        for clips in held:
            test = np.isin(group, clips)
            predicted[test] = (z[test] - z[~test].mean(0)) @ _solve(z[~test], y[~test], ridge)
        score = float(column_correlation(torch.from_numpy(predicted), torch.from_numpy(y)).mean())
        if best is None or score > best[0]:
            best = (score, ridge)
    assert best is not None
    return MouthPrior(
        context_frames=context_frames, columns=list(columns),
        feature_mean=torch.from_numpy(mean).float(), feature_scale=torch.from_numpy(scale).float(),
        weights=torch.from_numpy(_solve(z, y, best[1])).float(), ridge=best[1], cv_correlation=best[0],
        clips=list(names), frames=int(len(y)),
    )
