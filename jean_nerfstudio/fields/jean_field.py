"""The conditioned head field: a canonical hash grid modulated by audio and expression codes.

Per sample point x with its ray's audio code a and expression code e:

    c(x)        = coarse_grid(x)                           cheap, low-resolution spatial features
    att_a(x)    = sigmoid(MLP_att(c))[:Da]                 *where* audio acts (learned: mostly the mouth)
    att_e(x)    = sigmoid(MLP_att(c))[Da:]                 *where* expression acts (brows, eyes, cheeks)
    dx          = max_offset * tanh(MLP_def([c, att_a*a, att_e*e]))   small deformation ("ambient" motion)
    f(x)        = grid(x + dx)                             the canonical head, sampled where the motion moved it
    sigma, g    = MLP_density([f, att_a*a, att_e*e])
    rgb         = MLP_color([g, SH(d)])

The region attention is the ER-NeRF/JEAN idea of letting space decide which condition matters; the rendered
attention maps are outputs of the model (the viewer shows them), and a loss keeps audio attention off the upper face.
The deformation is regularized towards zero by the model.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from jaxtyping import Float
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import SHEncoding
from torch import Tensor, nn

from jean_nerfstudio.fields.hash_grid import HashGrid, Implementation


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 1) -> nn.Sequential:
    """A ReLU MLP with `layers` hidden layers of width `hidden`."""
    dims = [in_dim] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    modules.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*modules)


def normalize_to_box(positions: Float[Tensor, "*bs 3"], aabb: Float[Tensor, "2 3"]) -> Float[Tensor, "*bs 3"]:
    """Map the scene box to [0, 1]^3."""
    return (positions - aabb[0]) / (aabb[1] - aabb[0])


def inside_unit_box(x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
    return ((x >= 0.0) & (x <= 1.0)).all(dim=-1, keepdim=True).to(x.dtype)


class JeanHeadField(nn.Module):
    """The audio- and expression-conditioned head radiance field.

    Args:
        aabb: scene box [[x0, y0, z0], [x1, y1, z1]] around the head.
        audio_dim: size of the per-ray audio code.
        expression_dim: size of the per-ray expression code.
        num_levels, log2_hashmap_size, base_resolution, max_resolution, features_per_level: the canonical grid.
        coarse_levels, coarse_max_resolution: the small grid that drives attention and deformation.
        hidden_dim: width of the density and color MLPs.
        geo_feat_dim: features passed from the density to the color MLP.
        max_offset: bound of the deformation, in scene units.
        implementation: hash grid backend ("auto": tcnn after its self-check, else Triton on CUDA, else torch).
    """

    def __init__(
        self,
        aabb: Tensor,
        audio_dim: int,
        expression_dim: int,
        num_levels: int = 16,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 1024,
        features_per_level: int = 2,
        coarse_levels: int = 6,
        coarse_max_resolution: int = 64,
        hidden_dim: int = 64,
        geo_feat_dim: int = 15,
        max_offset: float = 0.15,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.audio_dim = audio_dim
        self.expression_dim = expression_dim
        self.geo_feat_dim = geo_feat_dim
        self.max_offset = max_offset
        self.coarse_grid = HashGrid(
            num_dims=3,
            num_levels=coarse_levels,
            features_per_level=2,
            log2_hashmap_size=min(log2_hashmap_size, 16),
            base_resolution=8,
            max_resolution=coarse_max_resolution,
            implementation=implementation,
        )
        self.grid = HashGrid(
            num_dims=3,
            num_levels=num_levels,
            features_per_level=features_per_level,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
            implementation=implementation,
        )
        cond_dim = audio_dim + expression_dim
        coarse_dim = self.coarse_grid.out_dim
        self.attention = mlp(coarse_dim, 32, cond_dim)
        self.deformation = mlp(coarse_dim + cond_dim, hidden_dim, 3)
        # Start with no motion: the deformation is a correction learned on top of a still head.
        nn.init.zeros_(self.deformation[-1].weight)
        nn.init.zeros_(self.deformation[-1].bias)
        self.density_mlp = mlp(self.grid.out_dim + cond_dim, hidden_dim, 1 + geo_feat_dim)
        self.direction_encoding = SHEncoding(levels=3, implementation="torch")
        self.color_mlp = mlp(geo_feat_dim + self.direction_encoding.get_out_dim(), hidden_dim, 3, layers=2)

    def density_and_geometry(
        self,
        positions: Float[Tensor, "*bs 3"],
        audio_code: Float[Tensor, "*bs audio_dim"],
        expression_code: Float[Tensor, "*bs expression_dim"],
    ) -> Dict[str, Tensor]:
        """Density and the features the colour needs, without the colour (renderers skip colour where T ~ 0)."""
        x = normalize_to_box(positions, self.aabb)
        inside = inside_unit_box(x)
        x_clamped = x.clamp(0.0, 1.0)
        coarse = self.coarse_grid(x_clamped).to(positions.dtype)
        attention = torch.sigmoid(self.attention(coarse))
        att_audio, att_expr = attention.split([self.audio_dim, self.expression_dim], dim=-1)
        conditioned = torch.cat([att_audio * audio_code, att_expr * expression_code], dim=-1)

        offset = self.max_offset * torch.tanh(self.deformation(torch.cat([coarse, conditioned], dim=-1)))
        x_moved = (x_clamped + offset / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)
        features = self.grid(x_moved).to(positions.dtype)

        h = self.density_mlp(torch.cat([features, conditioned], dim=-1))
        density_raw, geo = h.split([1, self.geo_feat_dim], dim=-1)
        return {
            "density": trunc_exp(density_raw.float() - 1.0) * inside,
            "geometry": geo,
            "offset": offset * inside,
            "audio_attention": att_audio.mean(dim=-1, keepdim=True),
            "expression_attention": att_expr.mean(dim=-1, keepdim=True),
        }

    def color(self, geometry: Float[Tensor, "*bs geo"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        # The torch SH basis takes unit vectors (tcnn's takes [0, 1]; this field always uses the torch basis: it is cheap).
        sh = self.direction_encoding(directions).to(geometry.dtype)
        return torch.sigmoid(self.color_mlp(torch.cat([geometry, sh], dim=-1)))

    def forward(
        self,
        positions: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        audio_code: Float[Tensor, "*bs audio_dim"],
        expression_code: Float[Tensor, "*bs expression_dim"],
    ) -> Dict[str, Tensor]:
        """Evaluate the field at sample points; codes are already broadcast to the points' batch shape.

        Returns:
            density [*bs, 1], rgb [*bs, 3], offset [*bs, 3] (scene units), audio_attention and
            expression_attention [*bs, 1] (mean attention, for the rendered attention maps).
        """
        out = self.density_and_geometry(positions, audio_code, expression_code)
        out["rgb"] = self.color(out.pop("geometry"), directions)
        return out


class ConditionedProposalField(nn.Module):
    """A small density-only field for proposal sampling, conditioned on the same per-ray codes.

    Proposal networks must bound the head's density for *this* frame's mouth and expression (an open jaw puts density
    where a closed one has none), so they see the codes too, the way time-conditioned plugins pass `times`.
    """

    def __init__(
        self,
        aabb: Tensor,
        cond_dim: int,
        num_levels: int = 5,
        max_resolution: int = 128,
        log2_hashmap_size: int = 17,
        hidden_dim: int = 16,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.grid = HashGrid(
            num_dims=3,
            num_levels=num_levels,
            features_per_level=2,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=16,
            max_resolution=max_resolution,
            implementation=implementation,
        )
        self.mlp = mlp(self.grid.out_dim + cond_dim, hidden_dim, 1)

    def density_fn(
        self, positions: Float[Tensor, "*rays samples 3"], cond: Optional[Float[Tensor, "*rays cond"]] = None
    ) -> Float[Tensor, "*rays samples 1"]:
        """Density at `positions`; `cond` is per ray and is broadcast over the samples."""
        x = normalize_to_box(positions, self.aabb)
        inside = inside_unit_box(x)
        features = self.grid(x.clamp(0.0, 1.0)).to(positions.dtype)
        if cond is None:
            raise ValueError("ConditionedProposalField needs the per-ray condition (bind it with functools.partial)")
        cond_b = cond[..., None, :].expand(*positions.shape[:-1], cond.shape[-1])
        raw = self.mlp(torch.cat([features, cond_b.to(features.dtype)], dim=-1))
        return trunc_exp(raw.float() - 1.0) * inside
