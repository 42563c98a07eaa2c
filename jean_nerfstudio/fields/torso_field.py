"""The image-space torso layer: colour and opacity at a pixel, given the head pose.

The torso (neck, shoulders, clothes) is not rigid with the head, so it does not belong in the head's canonical 3D
frame. Like the anchors, we model it in image space: a 2D hash grid over normalized pixel coordinates, sampled at a
position shifted by a small pose-driven deformation (the shoulders follow the head a little), then a small MLP.
It is trained in the same `ns-train` run as the head, through the same composite photometric loss.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from jean_nerfstudio.fields.hash_grid import HashGrid, Implementation
from jean_nerfstudio.fields.jean_field import mlp

POSE_FEATURE_DIM = 9
"""Head pose relative to the clip's mean pose: the first two rotation columns (6) and the translation (3)."""


def fourier_features(x: Float[Tensor, "*bs d"], num_frequencies: int) -> Float[Tensor, "*bs out"]:
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < num_frequencies."""
    freqs = (2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)) * torch.pi
    angles = x[..., None] * freqs  # [*bs, d, K]
    return torch.cat([x, torch.sin(angles).flatten(-2), torch.cos(angles).flatten(-2)], dim=-1)


class TorsoField(nn.Module):
    """rgb, alpha = torso(uv, pose).

    Args:
        num_levels, max_resolution, log2_hashmap_size: the 2D grid over [0, 1]^2 pixel coordinates.
        hidden_dim: MLP width.
        max_offset: bound of the pose-driven shift, in normalized image units.
        implementation: hash grid backend.
    """

    def __init__(
        self,
        num_levels: int = 12,
        max_resolution: int = 1024,
        log2_hashmap_size: int = 17,
        hidden_dim: int = 64,
        max_offset: float = 0.05,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.max_offset = max_offset
        self.pose_embedding = mlp(POSE_FEATURE_DIM, 32, 16)
        self.num_uv_frequencies = 4
        uv_dim = 2 + 2 * 2 * self.num_uv_frequencies
        self.deformation = mlp(16 + uv_dim, hidden_dim, 2)
        nn.init.zeros_(self.deformation[-1].weight)
        nn.init.zeros_(self.deformation[-1].bias)
        self.grid = HashGrid(
            num_dims=2,
            num_levels=num_levels,
            features_per_level=2,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=16,
            max_resolution=max_resolution,
            implementation=implementation,
        )
        self.head = mlp(self.grid.out_dim + 16, hidden_dim, 4)

    def forward(
        self, uv: Float[Tensor, "*bs 2"], pose: Float[Tensor, "*bs 9"]
    ) -> Tuple[Float[Tensor, "*bs 3"], Float[Tensor, "*bs 1"]]:
        """Colour and opacity of the torso layer at normalized pixel `uv` for head pose features `pose`."""
        pose_emb = self.pose_embedding(pose)
        shift = self.max_offset * torch.tanh(self.deformation(torch.cat([pose_emb, fourier_features(uv, self.num_uv_frequencies)], -1)))
        features = self.grid((uv + shift).clamp(0.0, 1.0)).to(uv.dtype)
        out = self.head(torch.cat([features, pose_emb], dim=-1))
        return torch.sigmoid(out[..., :3]), torch.sigmoid(out[..., 3:])
