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

from typing import Dict, Optional, Sequence

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


def linear_on_parts(layer: nn.Linear, parts: Sequence[Tensor]) -> Tensor:
    """`layer(torch.cat(parts, dim=-1))` without building the concatenation: one product per part, accumulated.

    The same values; about twice as fast on the CPU for the per-sample layers that read [features, condition], whose
    concatenation was a full copy of every sample's inputs. A part may have size 1 in a batch dimension (a per-ray
    condition shared by the ray's samples): its product is computed once and broadcast.
    """
    out: Optional[Tensor] = None
    start = 0
    for part in parts:
        stop = start + part.shape[-1]
        weight = layer.weight[:, start:stop]
        if out is None:
            out = nn.functional.linear(part, weight, layer.bias)
        elif part.shape[:-1] == out.shape[:-1]:
            flat = torch.addmm(out.reshape(-1, out.shape[-1]), part.reshape(-1, part.shape[-1]), weight.t())
            out = flat.view(out.shape)
        else:
            out = out + nn.functional.linear(part, weight)
        start = stop
    if out is None or start != layer.in_features:
        raise ValueError(f"parts of total width {start} for a layer of {layer.in_features} inputs")
    return out


def mlp_on_parts(network: nn.Sequential, parts: Sequence[Tensor]) -> Tensor:
    """`network(torch.cat(parts, dim=-1))` for an `mlp(...)`, its first layer applied part by part."""
    return network[1:](linear_on_parts(network[0], parts))


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
        # One product against both codes (a per-ray code broadcasts over its samples without being copied).
        conditioned = attention * torch.cat([audio_code, expression_code], dim=-1)

        offset = self.max_offset * torch.tanh(mlp_on_parts(self.deformation, [coarse, conditioned]))
        x_moved = (x_clamped + offset / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)
        features = self.grid(x_moved).to(positions.dtype)

        h = mlp_on_parts(self.density_mlp, [features, conditioned])
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
        """Evaluate the field at sample points; the codes broadcast to the points' batch shape ([R, 1, D] per ray).

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
        # The condition is constant along a ray: its share of the first layer is computed once per ray and broadcast
        # over the samples instead of being concatenated onto each of them (it is most of the layer's input).
        raw = mlp_on_parts(self.mlp, [features, cond[..., None, :].to(features.dtype)])
        return trunc_exp(raw.float() - 1.0) * inside
