"""Disentanglement probes: what can be read out of expression codes on frames the encoder never trained on.

A probe is a regression fitted on codes of training frames and scored on held-out frames (the eval split of the
training clips, or a clip the encoder never saw):

- mouth shape, high-pass (`speech_targets`): should be near chance, R^2 ~ 0, for the codes;
- upper face at full rate (brows, eyes, blinks, cheeks; `upper_targets`): should be high;
- expressive mouth (smile, frown; `expressive_targets`): should be kept.

Two probe kinds: ridge regression (the regularizer picked by contiguous cross-validation on the training frames) and
a small MLP (catches non-linear leaks the ridge misses). The same probes run on reference feature sets so the numbers
mean something: the raw blendshapes (or landmarks), the encoder's own inputs, and time-shifted codes (chance).

R^2 is pooled over the target columns (1 - sum SSE / sum SST, each column in units of its training std), each column
centred per clip segment: a probe measures how the codes track variation within a clip, not identity offsets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge strengths tried, relative to the mean feature energy."""


@dataclass
class Segment:
    """Features and targets of one contiguous piece of one clip (rows are frames)."""

    features: np.ndarray
    """[n, D] probe inputs (codes or a reference feature set)."""
    targets: np.ndarray
    """[n, S] probe targets."""

    def centred(self) -> "Segment":
        return Segment(self.features - self.features.mean(0), self.targets - self.targets.mean(0))


@dataclass
class ProbeScore:
    """Held-out scores of one feature set on one target set."""

    ridge_r2: float
    """Pooled R^2 of the ridge probe on the test frames (0 = chance: predicting the mean)."""
    mlp_r2: float
    """Pooled R^2 of the MLP probe (nan when not run)."""
    tercile_accuracy: float
    """Accuracy of the ridge prediction of the first (key) target column binned into terciles (chance 1/3)."""
    num_train: int
    num_test: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def _stack(segments: Sequence[Segment]) -> Tuple[np.ndarray, np.ndarray]:
    cs = [s.centred() for s in segments if len(s.features) > 1]
    return np.concatenate([c.features for c in cs]).astype(np.float64), np.concatenate([c.targets for c in cs]).astype(
        np.float64
    )


def _ridge_path(x: np.ndarray, y: np.ndarray, strengths: Sequence[float]) -> List[np.ndarray]:
    """Ridge coefficients for several strengths (relative to the mean feature energy) from one eigendecomposition.

    Torch (float64) rather than numpy: it honours `torch.set_num_threads`, while numpy's BLAS threads fight over
    shared cores and made each small solve ~50x slower on the 2-core machines.
    """
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    gram = xt.T @ xt
    evals, evecs = torch.linalg.eigh(gram)
    projected = evecs.T @ (xt.T @ yt)
    scale = max(float(gram.diagonal().mean()), 1e-12)
    return [(evecs @ (projected / (evals + s * scale)[:, None])).numpy() for s in strengths]


def pooled_r2(pred: np.ndarray, truth: np.ndarray, scale: np.ndarray) -> float:
    """1 - SSE / SST summed over columns, each column divided by `scale` (its training std) first.

    Pooling weights a column by how much it moves in the test frames relative to training, so a column that is
    nearly still in the test clip (where a per-column R^2 explodes) counts little. `truth` must be centred.
    """
    truth = truth / scale
    pred = pred / scale
    sst = float((truth**2).sum())
    return float("nan") if sst <= 1e-12 else 1.0 - float(((truth - pred) ** 2).sum()) / sst


def _column_scale(y: np.ndarray) -> np.ndarray:
    std = y.std(0)
    return np.where(std > 1e-8, std, np.inf)  # a still training column is ignored (its scaled values are 0)


def fit_ridge_probe(x: np.ndarray, y: np.ndarray, folds: int = 5) -> np.ndarray:
    """Ridge coefficients with the strength chosen by contiguous k-fold CV (frames are correlated in time)."""
    n = len(x)
    bounds = np.linspace(0, n, folds + 1).astype(int)
    scale = _column_scale(y)
    scores = np.zeros(len(RIDGE_GRID))
    for a, b in zip(bounds[:-1], bounds[1:]):
        train = np.r_[0:a, b:n]
        for i, coef in enumerate(_ridge_path(x[train], y[train], RIDGE_GRID)):
            scores[i] += pooled_r2(x[a:b] @ coef, y[a:b] - y[a:b].mean(0), scale)
    best = RIDGE_GRID[int(np.nanargmax(scores))] if np.isfinite(scores).any() else RIDGE_GRID[-1]
    return _ridge_path(x, y, [best])[0]


def _mlp_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """A two-layer MLP probe, early-stopped on the last 20% of the training frames (contiguous, so not leaky)."""
    gen = torch.Generator().manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    ysd = y_train.std(0) + 1e-8
    xt = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y_train / ysd, dtype=torch.float32)
    cut = int(0.8 * len(xt))
    net = torch.nn.Sequential(
        torch.nn.Linear(xt.shape[1], 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, yt.shape[1]),
    )
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 if p.dim() > 1 else torch.zeros_like(p))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    best_loss, best_state = float("inf"), None
    for step in range(600):
        opt.zero_grad()
        loss = (net(xt[:cut]) - yt[:cut]).pow(2).mean()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                val = float((net(xt[cut:]) - yt[cut:]).pow(2).mean())
            if val < best_loss:
                best_loss, best_state = val, {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    with torch.no_grad():
        pred = net(torch.tensor((x_test - mu) / sd, dtype=torch.float32)).numpy()
    return pred * ysd


def probe(
    train: Sequence[Segment], test: Sequence[Segment], mlp: bool = True, key_column: int = 0
) -> ProbeScore:
    """Fit probes on `train` segments, score them on `test` segments."""
    x_tr, y_tr = _stack(train)
    x_te, y_te = _stack(test)
    coef = fit_ridge_probe(x_tr, y_tr)
    pred = x_te @ coef
    scale = _column_scale(y_tr)
    ridge_r2 = pooled_r2(pred, y_te, scale)
    mlp_r2 = pooled_r2(_mlp_predict(x_tr, y_tr, x_te), y_te, scale) if mlp else float("nan")
    edges = np.quantile(y_tr[:, key_column], [1 / 3, 2 / 3])
    truth_bin = np.digitize(y_te[:, key_column], edges)
    pred_bin = np.digitize(pred[:, key_column], np.quantile(x_tr @ coef[:, key_column], [1 / 3, 2 / 3]))
    tercile = float((truth_bin == pred_bin).mean())
    return ProbeScore(ridge_r2, mlp_r2, tercile, len(x_tr), len(x_te))


def probe_table(
    feature_sets: Dict[str, Tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    target_sets: Dict[str, Tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    key_columns: Optional[Dict[str, int]] = None,
    mlp: bool = True,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Scores of every feature set on every target set.

    Args:
        feature_sets: name -> (train feature arrays, test feature arrays), one array per clip segment.
        target_sets: name -> (train target arrays, test target arrays), segments aligned with the features.
        key_columns: target set -> column used for the tercile accuracy.
        mlp: also run the MLP probe.

    Returns:
        {feature set: {target set: ProbeScore as dict}}.
    """
    key_columns = key_columns or {}
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for fname, (f_train, f_test) in feature_sets.items():
        table[fname] = {}
        for tname, (t_train, t_test) in target_sets.items():
            if not t_train or t_train[0].shape[1] == 0:
                continue
            train = [Segment(f, t) for f, t in zip(f_train, t_train)]
            test = [Segment(f, t) for f, t in zip(f_test, t_test)]
            table[fname][tname] = probe(train, test, mlp=mlp, key_column=key_columns.get(tname, 0)).to_dict()
    return table
