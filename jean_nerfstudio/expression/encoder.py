"""The expression encoder: a transformer with banded self-attention over a clip's whole frame sequence.

Every frame attends only to frames within its layer's band, and the bands of all layers add up to half the configured
window, so the code of frame t depends on the inputs in [t - window/2, t + window/2] and on nothing else: not on the
rest of the clip, not on other clips in a batch, not on absolute position (there is no absolute position encoding;
attention is biased by the *relative time in seconds* instead). Two consequences the NeRF relies on: codes are the
same whether a clip is encoded alone or in a batch, and a 30 fps clip behaves like a 25 fps one (the window and the
position bias are in seconds; only the band in frames is re-derived from the fps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Type

import torch
from jaxtyping import Bool, Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn


@dataclass
class ExpressionEncoderConfig(InstantiateConfig):
    """Banded-attention transformer: per-frame expression inputs [N, F] -> per-frame codes [N, D]."""

    _target: Type = field(default_factory=lambda: ExpressionEncoder)
    """Target class to instantiate."""
    window_seconds: float = 3.0
    """Receptive field in seconds: the code of frame t sees the inputs within +-window_seconds/2 of t."""
    code_dim: int = 32
    """Dimension D of the per-frame expression code handed to the NeRF."""
    hidden_dim: int = 64
    """Width of the transformer."""
    num_layers: int = 2
    """Transformer blocks; their attention bands split the window between them."""
    num_heads: int = 4
    """Attention heads per block."""
    feedforward_mult: int = 2
    """Feed-forward width as a multiple of hidden_dim."""
    dropout: float = 0.1
    """Dropout on the attention output and feed-forward activations (training only; eval is deterministic)."""
    linear_skip: bool = True
    """Add a per-frame linear path from the standardized inputs to the code (beside the transformer)."""
    time_bias_resolution_seconds: float = 0.1
    """Spacing of the learned relative-time attention bias table (linearly interpolated in between)."""


def band_radii(window_seconds: float, fps: float, num_layers: int) -> List[int]:
    """Per-layer attention radii (frames) that add up to round(window_seconds / 2 * fps).

    >>> band_radii(3.0, 25.0, 2)
    [19, 19]
    """
    total = max(0, int(round(window_seconds / 2.0 * fps)))
    base, extra = divmod(total, num_layers)
    return [base + (1 if i < extra else 0) for i in range(num_layers)]


def banded_attention(
    q: Float[Tensor, "batch num_frames heads head_dim"],
    k: Float[Tensor, "batch num_frames heads head_dim"],
    v: Float[Tensor, "batch num_frames heads head_dim"],
    radius: int,
    bias: Optional[Float[Tensor, "heads offsets"]] = None,
    key_valid: Optional[Bool[Tensor, "batch num_frames"]] = None,
    dropout_p: float = 0.0,
) -> Float[Tensor, "batch num_frames heads head_dim"]:
    """Attention where query i sees keys j with |i - j| <= radius, computed block-wise (O(N * radius) memory).

    `bias[h, o]` is added to the logit of offset j - i = o - radius. Keys outside the sequence or with
    `key_valid == False` get exactly zero weight. `dense_banded_attention` is the plain reference.
    """
    batch, n, heads, dim = q.shape
    offsets = 2 * radius + 1
    block = max(16, radius)
    num_blocks = (n + block - 1) // block
    pad_end = num_blocks * block - n
    if key_valid is None:
        key_valid = torch.ones(batch, n, dtype=torch.bool, device=q.device)
    # Keys/values padded by `radius` before and `radius + pad_end` after; block b's queries [b*block, (b+1)*block)
    # see padded keys [b*block, b*block + block + 2*radius).
    k_pad = nn.functional.pad(k, (0, 0, 0, 0, radius, radius + pad_end))
    v_pad = nn.functional.pad(v, (0, 0, 0, 0, radius, radius + pad_end))
    valid_pad = nn.functional.pad(key_valid, (radius, radius + pad_end), value=False)
    span = block + 2 * radius
    k_blocks = k_pad.unfold(1, span, block)  # [B, nb, H, d, span]
    v_blocks = v_pad.unfold(1, span, block)
    valid_blocks = valid_pad.unfold(1, span, block)  # [B, nb, span]
    q_blocks = nn.functional.pad(q, (0, 0, 0, 0, 0, pad_end)).view(batch, num_blocks, block, heads, dim)

    logits = torch.einsum("bnqhd,bnhdk->bnhqk", q_blocks, k_blocks) / math.sqrt(dim)
    # Offset of padded key position k relative to query q inside a block: (k - radius) - q.
    rel = torch.arange(span, device=q.device)[None, :] - radius - torch.arange(block, device=q.device)[:, None]
    in_band = rel.abs() <= radius  # [block, span]
    allowed = in_band[None, None, None] & valid_blocks[:, :, None, None, :]  # [B, nb, 1, block, span]
    if bias is not None:
        gathered = bias[:, (rel + radius).clamp(0, offsets - 1)]  # [H, block, span]
        logits = logits + gathered[None, None]
    # A finite floor instead of -inf: a query with no visible key (padding) gets harmless uniform weights, no NaN.
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min / 2)
    weights = torch.softmax(logits, dim=-1) * allowed
    if dropout_p > 0:
        weights = nn.functional.dropout(weights, p=dropout_p, training=True)
    out = torch.einsum("bnhqk,bnhdk->bnqhd", weights, v_blocks)
    return out.reshape(batch, num_blocks * block, heads, dim)[:, :n]


def dense_banded_attention(
    q: Float[Tensor, "batch num_frames heads head_dim"],
    k: Float[Tensor, "batch num_frames heads head_dim"],
    v: Float[Tensor, "batch num_frames heads head_dim"],
    radius: int,
    bias: Optional[Float[Tensor, "heads offsets"]] = None,
    key_valid: Optional[Bool[Tensor, "batch num_frames"]] = None,
) -> Float[Tensor, "batch num_frames heads head_dim"]:
    """Reference for `banded_attention`: the full N x N attention with a band mask (O(N^2); tests only)."""
    n = q.shape[1]
    pos = torch.arange(n, device=q.device)
    rel = pos[None, :] - pos[:, None]  # [query, key]
    allowed = (rel.abs() <= radius)[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias[:, (rel + radius).clamp(0, 2 * radius)][None]
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min / 2)
    weights = torch.softmax(logits, dim=-1) * allowed
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


class RelativeTimeBias(nn.Module):
    """A learned per-head attention bias as a function of relative time in seconds (piecewise linear)."""

    def __init__(self, num_heads: int, max_seconds: float, resolution_seconds: float) -> None:
        super().__init__()
        self.max_seconds = max(float(max_seconds), resolution_seconds)
        self.resolution = float(resolution_seconds)
        num_knots = 2 * int(math.ceil(self.max_seconds / self.resolution)) + 1
        self.table = nn.Parameter(torch.zeros(num_heads, num_knots))

    def forward(self, radius: int, fps: float) -> Float[Tensor, "heads offsets"]:
        seconds = torch.arange(-radius, radius + 1, device=self.table.device, dtype=self.table.dtype) / fps
        pos = (seconds.clamp(-self.max_seconds, self.max_seconds) / self.resolution) + (self.table.shape[1] - 1) / 2
        lo = pos.floor().long().clamp(0, self.table.shape[1] - 1)
        hi = (lo + 1).clamp(max=self.table.shape[1] - 1)
        w = pos - lo.to(pos.dtype)
        return self.table[:, lo] * (1 - w) + self.table[:, hi] * w


class BandedBlock(nn.Module):
    """Pre-norm transformer block with banded self-attention."""

    def __init__(self, config: ExpressionEncoderConfig) -> None:
        super().__init__()
        hidden, heads = config.hidden_dim, config.num_heads
        if hidden % heads:
            raise ValueError(f"hidden_dim {hidden} must be divisible by num_heads {heads}")
        self.heads = heads
        self.dropout = config.dropout
        self.norm_attn = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.time_bias = RelativeTimeBias(heads, config.window_seconds / 2.0, config.time_bias_resolution_seconds)
        self.norm_ff = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, config.feedforward_mult * hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.feedforward_mult * hidden, hidden),
        )

    def forward(
        self,
        x: Float[Tensor, "batch num_frames hidden"],
        radius: int,
        fps: float,
        valid: Optional[Bool[Tensor, "batch num_frames"]],
    ) -> Float[Tensor, "batch num_frames hidden"]:
        batch, n, hidden = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(batch, n, 3, self.heads, hidden // self.heads).unbind(2)
        attended = banded_attention(q, k, v, radius, bias=self.time_bias(radius, fps), key_valid=valid)
        # Dropout on the block's output, not on the [N, heads, band] attention weights: same regularization in our
        # ablations, a fraction of the cost (random numbers for every weight dominated a CPU training step).
        out = self.proj(attended.reshape(batch, n, hidden))
        x = x + nn.functional.dropout(out, p=self.dropout, training=self.training)
        return x + self.ff(self.norm_ff(x))


class ExpressionEncoder(nn.Module):
    """Per-frame expression inputs -> per-frame expression codes.

    >>> enc = ExpressionEncoderConfig().setup(input_dim=10, fps=25.0).eval()
    >>> enc(torch.zeros(100, 10)).shape, enc.output_dim
    (torch.Size([100, 32]), 32)

    Inputs are in raw units (see `inputs.ExpressionInputs.values`); the encoder standardizes them with per-channel
    statistics held as buffers (set by `fit_input_normalization`, saved in checkpoints).
    """

    def __init__(self, config: ExpressionEncoderConfig, input_dim: int, fps: float) -> None:
        super().__init__()
        self.config = config
        self.input_dim = int(input_dim)
        self.register_buffer("input_center", torch.zeros(self.input_dim))
        self.register_buffer("input_scale", torch.ones(self.input_dim))
        # The unfloored training spread of each channel: viewer edits are limited by it (see controls.py).
        self.register_buffer("input_std", torch.ones(self.input_dim))
        # Hidden (masked) input entries are replaced by this learned per-channel value (the objective's masking).
        self.mask_token = nn.Parameter(torch.zeros(self.input_dim))
        self.input_proj = nn.Linear(self.input_dim, config.hidden_dim)
        self.blocks = nn.ModuleList([BandedBlock(config) for _ in range(config.num_layers)])
        self.out_norm = nn.LayerNorm(config.hidden_dim)
        self.head = nn.Linear(config.hidden_dim, config.code_dim)
        # A per-frame linear path from the standardized inputs straight to the code. The transformer adds what needs
        # context; the linear path carries the frame's own expression in a form that transfers across people (with
        # few training identities, the attention path alone fits each clip's idiosyncrasies).
        self.skip = nn.Linear(self.input_dim, config.code_dim, bias=False) if config.linear_skip else None
        self.fps = float(fps)
        self.radii = band_radii(config.window_seconds, self.fps, config.num_layers)

    @property
    def output_dim(self) -> int:
        """Code dimension D."""
        return self.config.code_dim

    @property
    def receptive_radius(self) -> int:
        """Frames on each side of t that the code of frame t depends on (sum of the layers' bands)."""
        return sum(self.radii)

    def set_fps(self, fps: float) -> None:
        """Re-derive the attention bands (frames) for another frame rate; the window in seconds stays the same."""
        self.fps = float(fps)
        self.radii = band_radii(self.config.window_seconds, self.fps, self.config.num_layers)

    @torch.no_grad()
    def fit_input_normalization(self, values: Float[Tensor, "num_frames num_channels"]) -> None:
        """Set the per-channel centre and scale from training inputs (frames of one or more clips, concatenated).

        Channels that barely move (e.g. `cheekPuff` in most clips) get a floored scale so noise is not amplified.
        """
        values = values.reshape(-1, self.input_dim).to(self.input_center)
        center = values.median(dim=0).values
        std = values.std(dim=0, unbiased=False)
        floor = 0.05 * std.median().clamp_min(1e-6)
        self.input_center.copy_(center)
        self.input_scale.copy_(std.clamp_min(float(floor)))
        self.input_std.copy_(std)

    def standardize(self, values: Float[Tensor, "*batch num_channels"]) -> Float[Tensor, "*batch num_channels"]:
        """Raw inputs -> the standardized units the network (and the objective's decoder) works in."""
        return (values - self.input_center) / self.input_scale

    def forward(
        self,
        values: Float[Tensor, "*batch num_frames num_channels"],
        hidden: Optional[Bool[Tensor, "*batch num_frames num_channels"]] = None,
        valid: Optional[Bool[Tensor, "*batch num_frames"]] = None,
    ) -> Float[Tensor, "*batch num_frames code_dim"]:
        """Encode one sequence [N, F] or a batch [B, N, F] of equally long (padded) sequences.

        Args:
            values: raw inputs, frames in order at `self.fps`.
            hidden: entries to hide (replaced by the learned mask token); the objective's masked modelling.
            valid: False for padding frames of shorter sequences in a batch; they never influence valid frames.

        Returns:
            Codes [..., N, D]; rows of padding frames are meaningless.
        """
        if values.shape[-1] != self.input_dim:
            raise ValueError(
                f"expression inputs have {values.shape[-1]} channels, the encoder expects {self.input_dim}"
            )
        single = values.dim() == 2
        if single:
            values = values[None]
            hidden = hidden[None] if hidden is not None else None
            valid = valid[None] if valid is not None else None
        x = self.standardize(values)
        if hidden is not None:
            x = torch.where(hidden, self.mask_token.to(x), x)
        if valid is not None:
            # Padding rows are zeroed so that nothing non-finite can reach a valid frame through a zero weight.
            x = torch.where(valid[..., None], x, torch.zeros_like(x))
        h = self.input_proj(x)
        for block, radius in zip(self.blocks, self.radii):
            h = block(h, radius, self.fps, valid)
        codes = self.head(self.out_norm(h))
        if self.skip is not None:
            codes = codes + self.skip(x)
        return codes[0] if single else codes
