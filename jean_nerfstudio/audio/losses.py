"""Losses of the lip-sync contrastive model: InfoNCE with offset hard negatives, dependence penalties, gradient reversal.

Stateless functions (torchaudio's `functional` style) plus one autograd function.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def sync_info_nce(
    audio: Float[Tensor, "batch dim"],
    mouth_offsets: Float[Tensor, "batch offsets dim"],
    positive_index: int,
    temperature: float,
    in_batch_valid: Optional[Bool[Tensor, "batch batch"]] = None,
) -> Float[Tensor, ""]:
    """InfoNCE for audio -> mouth: pick the true mouth window of each audio window.

    The candidates of audio window i are the mouth windows of the same clip at every offset (`mouth_offsets[i]`, the
    true one at `positive_index`: these hard negatives a few frames away are what teach *sync*), plus the true mouth
    windows of the other batch items (other speakers and other moments: these teach *content*).

    Args:
        audio: unit-length audio embeddings.
        mouth_offsets: unit-length mouth embeddings, [i, k] = clip of item i at offset k.
        positive_index: the offset slot holding the true (offset 0) window.
        temperature: softmax temperature.
        in_batch_valid: [i, j] False masks item j's mouth out of i's negatives (same clip, same frame as i).

    >>> a = F.normalize(torch.randn(4, 8), dim=-1); m = F.normalize(torch.randn(4, 31, 8), dim=-1)
    >>> sync_info_nce(a, m, positive_index=15, temperature=0.1).shape
    torch.Size([])
    """
    batch = audio.shape[0]
    hard = torch.einsum("bd,bkd->bk", audio, mouth_offsets)  # [B, K]
    positives = mouth_offsets[:, positive_index]  # [B, D]
    others = audio @ positives.T  # [B, B]; the diagonal is the positive itself, already in `hard`
    mask = ~torch.eye(batch, dtype=torch.bool, device=audio.device)
    if in_batch_valid is not None:
        mask = mask & in_batch_valid
    others = others.masked_fill(~mask, float("-inf"))
    logits = torch.cat([hard, others], dim=1) / temperature
    target = torch.full((batch,), positive_index, dtype=torch.long, device=audio.device)
    return F.cross_entropy(logits, target)


def symmetric_info_nce(
    audio: Float[Tensor, "batch dim"],
    mouth: Float[Tensor, "batch dim"],
    temperature: float,
    in_batch_valid: Optional[Bool[Tensor, "batch batch"]] = None,
) -> Float[Tensor, ""]:
    """Mouth -> audio InfoNCE over the batch (the CLIP direction that the offset term does not cover)."""
    logits = (mouth @ audio.T) / temperature  # [B, B]: row i = mouth i against every audio window
    if in_batch_valid is not None:
        keep = in_batch_valid | torch.eye(audio.shape[0], dtype=torch.bool, device=audio.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    target = torch.arange(audio.shape[0], device=audio.device)
    return F.cross_entropy(logits, target)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: Float[Tensor, "*shape"], scale: float) -> Float[Tensor, "*shape"]:
    """Identity forward; multiplies the gradient by -scale backward (Ganin & Lempitsky's gradient reversal).

    An adversary placed after it learns to predict its target from `x`, while whatever produced `x` learns to make
    that prediction fail: the adversary's loss is minimized by the head and maximized by the encoder.
    """
    return _GradientReversal.apply(x, float(scale))


def ramp_schedule(progress: float, max_weight: float) -> float:
    """DANN's ramp 2 / (1 + exp(-10 p)) - 1: no reversal while the encoder finds its feet, full strength at the end."""
    progress = min(max(progress, 0.0), 1.0)
    return float(max_weight * (2.0 / (1.0 + torch.exp(torch.tensor(-10.0 * progress)).item()) - 1.0))


def _standardize(x: Float[Tensor, "batch channels"]) -> Float[Tensor, "batch channels"]:
    return (x - x.mean(dim=0, keepdim=True)) / (x.std(dim=0, keepdim=True) + 1e-5)


def cross_correlation(features: Float[Tensor, "batch dim"], targets: Float[Tensor, "batch channels"]) -> Float[Tensor, "dim channels"]:
    """Pearson correlation of every feature channel with every target channel over the batch."""
    return _standardize(features).T @ _standardize(targets) / features.shape[0]


def cross_correlation_penalty(
    features: Float[Tensor, "batch dim"],
    targets: Float[Tensor, "batch channels"],
    running: Optional[Float[Tensor, "dim channels"]] = None,
    momentum: float = 0.9,
) -> tuple[Float[Tensor, ""], Float[Tensor, "dim channels"]]:
    """Sum of squared feature/target correlations, zero exactly when no linear probe can read the targets.

    On one batch of B frames, independent channels still correlate by chance (r^2 ~ 1/B each), and the gradient of
    that chance correlation is noise that fights the main loss. With `running` (the previous estimate, no gradient),
    the correlation is a moving average over batches: its gradient is the batch's scaled by the smoothed correlation,
    which is near zero for truly independent channels.

    Returns (penalty, the new running estimate to keep, detached).
    """
    if features.shape[0] < 3:
        zero = features.sum() * 0.0
        return zero, (running if running is not None else torch.zeros(features.shape[1], targets.shape[1]))
    corr = cross_correlation(features, targets)
    if running is not None:
        corr = momentum * running.to(corr) + (1.0 - momentum) * corr
    return (corr**2).sum(), corr.detach()


def _rbf_kernel(x: Float[Tensor, "batch dim"]) -> Float[Tensor, "batch batch"]:
    d2 = torch.cdist(x, x).pow(2)
    # Median heuristic for the bandwidth, held constant for the gradient (it is a scale, not something to optimize).
    return torch.exp(-d2 / (d2.detach().median().clamp_min(1e-6)))


def kernel_dependence(features: Float[Tensor, "batch dim"], targets: Float[Tensor, "batch channels"]) -> Float[Tensor, ""]:
    """Kernel CKA (normalized HSIC with RBF kernels) between features and targets over the batch, in [0, 1].

    Catches non-linear dependence that `cross_correlation_penalty` misses; normalized, so the encoder cannot lower it by
    shrinking its features.
    """
    n = features.shape[0]
    if n < 4:
        return features.sum() * 0.0
    centre = torch.eye(n, device=features.device) - 1.0 / n
    k = centre @ _rbf_kernel(_standardize(features)) @ centre
    l = centre @ _rbf_kernel(_standardize(targets)) @ centre
    return (k * l).sum() / (k.norm() * l.norm() + 1e-8)
