"""A fast inference renderer: occupancy-grid ray marching with early termination, a whole frame in a few calls.

Training uses nerfstudio's proposal sampler (the reference path). For playback this renderer:
  1. keeps an occupancy grid over the head box, built from the head field's density under many audio/expression
     codes (the training clip's, silence, neutral) and dilated, so it bounds the conditioned head conservatively;
  2. marches every pixel's ray in fixed steps only through the occupied part of the box, evaluates the head field's
     density at occupied samples alone, drops samples behind an opaque surface (transmittance < 1e-3) before the
     colour network runs, and composites per ray with segmented sums;
  3. adds the image-space torso and background for every pixel.
Pure PyTorch (tinycudann grids when present), so it runs on the CPU too; tests compare it with the reference renderer.

Like nerfacc's `OccGridEstimator`, the marcher (`OccupancyGridMarcher`) knows nothing of the model: it is handed
closures (an occupancy probe `density_fn(points) -> density` per code pair to build the grid; `density_fn(points) ->
(density, geometry)` and `color_fn(geometry, directions) -> rgb` to render) and decides only where to sample.
`FastRenderer` binds it to a trained head through `JeanDriver` (the closures, the pixel rays, the composite).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jean_nerfstudio.models.driving import ColorFn, DensityFn, JeanDriver

ProbeFn = Callable[[Float[Tensor, "n 3"]], Float[Tensor, "n"]]
"""Positions -> density, for building the occupancy grid."""


@dataclass
class FastRendererConfig:
    """Settings of the occupancy-grid renderer."""

    grid_resolution: int = 128
    """Occupancy cells per side of the head box."""
    steps_per_box_diagonal: int = 384
    """Marching step = box diagonal / this."""
    density_threshold: float = 0.01
    """A cell is occupied if the density of any probed code exceeds this (alpha of about 1e-4 per step)."""
    dilation: int = 1
    """Cells added around the occupied set (covers codes between the probed ones)."""
    transmittance_cutoff: float = 1e-3
    """Samples behind an almost opaque surface are dropped before colour is computed."""
    chunk_rays: int = 1 << 17
    """Rays marched per chunk (bounds memory)."""
    chunk_points: int = 1 << 20
    """Samples per field call: the torch hash grid holds 8 corner indices per level and sample, so a whole 512x512
    frame's samples in one call would need tens of GiB."""
    occupancy_chunk_points: int = 1 << 16
    """Samples per field call while the occupancy grid is built (smaller calls stay in the CPU caches)."""
    coarse_factor: int = 4
    """The occupancy is built coarse to fine: a grid this many times coarser is probed first, and only fine cells
    near its occupied cells are probed (1: probe every fine cell)."""
    coarse_probes: int = 8
    """Jittered points per coarse cell (a thin shell must not slip between them; its dilation adds a margin)."""
    max_probe_codes: int = 12
    """Code pairs probed by `build_occupancy_for_render` (farthest-point sampled over the candidates): the build
    costs cells x pairs field evaluations."""
    max_build_seconds: Optional[float] = None
    """A time budget for one occupancy build: cells not yet probed when it runs out count as occupied (conservative:
    marching then just evaluates more samples). None: no budget."""

    @classmethod
    def for_device(
        cls, device: torch.device, grid_resolution: Optional[int] = None, max_build_seconds: Optional[float] = None
    ) -> "FastRendererConfig":
        """The settings `jean-render --renderer fast` uses on `device`: on a CPU a 64^3 grid (8x fewer cells to probe;
        the marching step stays as fine) built in at most 60 s; on a GPU 128^3 without a budget. Explicit values win."""
        on_cpu = torch.device(device).type == "cpu"
        config = cls()
        if grid_resolution is not None:
            config.grid_resolution = int(grid_resolution)
        elif on_cpu:
            config.grid_resolution = 64
        config.max_build_seconds = max_build_seconds if max_build_seconds is not None else (60.0 if on_cpu else None)
        return config


class OccupancyGridMarcher:
    """An occupancy grid over a box and a ray marcher through its occupied cells, driven by field closures."""

    def __init__(self, aabb: Float[Tensor, "2 3"], config: FastRendererConfig) -> None:
        self.config = config
        self.aabb = aabb
        self.device = aabb.device
        diag = float(torch.linalg.norm(self.aabb[1] - self.aabb[0]))
        self.step = diag / self.config.steps_per_box_diagonal
        self.occupancy: Optional[Bool[Tensor, "G G G"]] = None
        self._deadline: Optional[float] = None
        self.build_truncated = False
        """Whether the last build ran out of `max_build_seconds` (unprobed cells were then marked occupied)."""
        self.occupied_aabb: Optional[Float[Tensor, "2 3"]] = None

    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, probe_fns: Sequence[ProbeFn], probes_per_cell: int = 2) -> float:
        """Mark cells whose density exceeds the threshold under any of the probe closures.

        Coarse to fine, so that the cost follows the head rather than the box: cells of a grid `coarse_factor` times
        coarser are probed first (with `coarse_probes` jittered points each), their occupied set is dilated by one
        coarse cell, and only the fine cells inside it are probed (`probes_per_cell` points each). Empty space far
        from the head is never evaluated at the fine resolution (a time budget, `max_build_seconds`, bounds the rest).

        Returns the occupied fraction of the box.
        """
        g = self.config.grid_resolution
        generator = torch.Generator(device="cpu").manual_seed(0)
        budget = self.config.max_build_seconds
        self._deadline = None if budget is None else time.perf_counter() + budget
        self.build_truncated = False
        factor = max(1, int(self.config.coarse_factor))
        if factor > 1 and g % factor == 0 and g // factor >= 2:
            gc = g // factor
            coarse = self._probe_cells(_all_cells(gc, self.device), gc, probe_fns, self.config.coarse_probes, generator)
            coarse = F.max_pool3d(coarse.reshape(1, 1, gc, gc, gc).float(), kernel_size=3, stride=1, padding=1)[0, 0] > 0
            # Fine cells of the kept coarse cells: each coarse index times the factor plus every sub-cell offset.
            sub = _all_cells(factor, self.device)
            candidates = (coarse.nonzero()[:, None, :] * factor + sub[None]).reshape(-1, 3)
        else:
            candidates = _all_cells(g, self.device)
        occupied = torch.zeros(g, g, g, dtype=torch.bool, device=self.device)
        if candidates.numel():
            hit = self._probe_cells(candidates, g, probe_fns, probes_per_cell, generator)
            cells = candidates[hit]
            occupied[cells[:, 0], cells[:, 1], cells[:, 2]] = True
        grid = occupied.reshape(1, 1, g, g, g).float()
        if self.config.dilation > 0:
            k = 2 * self.config.dilation + 1
            grid = F.max_pool3d(grid, kernel_size=k, stride=1, padding=self.config.dilation)
        self.occupancy = grid[0, 0] > 0
        self._update_occupied_aabb()
        return float(self.occupancy.float().mean())

    def _probe_cells(
        self,
        cells: Int[Tensor, "n 3"],
        resolution: int,
        probe_fns: Sequence[ProbeFn],
        probes: int,
        generator: torch.Generator,
    ) -> Bool[Tensor, "n"]:
        """Whether the density at any of `probes` jittered points of each cell exceeds the threshold, under any probe
        closure; `occupancy_chunk_points` samples per call (large calls thrash the CPU caches and the allocator)."""
        lo, hi = self.aabb[0], self.aabb[1]
        size = (hi - lo) / resolution
        hit = torch.zeros(cells.shape[0], dtype=torch.bool, device=self.device)
        step = max(1, min(self.config.chunk_points, self.config.occupancy_chunk_points))
        for _ in range(max(1, probes)):
            jitter = torch.rand(cells.shape, generator=generator).to(self.device)
            points = lo + (cells.float() + jitter) * size
            for probe_fn in probe_fns:
                for chunk in torch.arange(points.shape[0], device=self.device).split(step):
                    if self._deadline is not None and time.perf_counter() > self._deadline:
                        # Out of time: every cell not yet shown occupied stays possibly occupied (conservative).
                        self.build_truncated = True
                        return torch.ones_like(hit)
                    todo = chunk[~hit[chunk]]  # a cell found occupied needs no further probe
                    if todo.numel() == 0:
                        continue
                    hit[todo] |= probe_fn(points[todo]) > self.config.density_threshold
        return hit

    def _update_occupied_aabb(self) -> None:
        assert self.occupancy is not None
        lo, hi = self.aabb[0], self.aabb[1]
        cell = (hi - lo) / self.config.grid_resolution
        if self.occupancy.any():
            cells = self.occupancy.nonzero()
            self.occupied_aabb = torch.stack([lo + cells.amin(0) * cell, lo + (cells.amax(0) + 1) * cell])
        else:
            self.occupied_aabb = self.aabb.clone()

    def occupied(self, points: Float[Tensor, "n 3"]) -> Bool[Tensor, "n"]:
        """Whether each point lies in an occupied cell (False outside the box)."""
        assert self.occupancy is not None, "build the occupancy grid first"
        g = self.config.grid_resolution
        rel = (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        idx = (rel * g).long()
        valid = ((idx >= 0) & (idx < g)).all(-1)
        idx = idx.clamp(0, g - 1)
        return valid & self.occupancy[idx[:, 0], idx[:, 1], idx[:, 2]]

    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_rays(
        self,
        origins: Float[Tensor, "rays 3"],
        directions: Float[Tensor, "rays 3"],
        density_fn: DensityFn,
        color_fn: ColorFn,
    ) -> Dict[str, Tensor]:
        """Colour (premultiplied), opacity and depth of rays through the field the closures describe."""
        assert self.occupancy is not None and self.occupied_aabb is not None, "build the occupancy grid first"
        n = origins.shape[0]
        rgb = torch.zeros(n, 3, device=self.device)
        acc = torch.zeros(n, device=self.device)
        depth = torch.zeros(n, device=self.device)
        # Slab intersection with the occupied region's box.
        inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
        t_a = (self.occupied_aabb[0] - origins) * inv
        t_b = (self.occupied_aabb[1] - origins) * inv
        t_near = torch.minimum(t_a, t_b).amax(-1).clamp_min(0.0)
        t_far = torch.maximum(t_a, t_b).amin(-1)
        hit = (t_far > t_near).nonzero()[:, 0]
        if hit.numel() == 0:
            return {"rgb": rgb, "accumulation": acc, "depth": depth}
        max_steps = int(torch.ceil((t_far[hit] - t_near[hit]).max() / self.step).item()) + 1
        for chunk in hit.split(max(1, self.config.chunk_rays)):
            self._march(chunk, origins, directions, t_near, t_far, max_steps, density_fn, color_fn, rgb, acc, depth)
        return {"rgb": rgb, "accumulation": acc, "depth": depth}

    def _density_and_geometry(self, points: Float[Tensor, "m 3"], density_fn: DensityFn):
        """`density_fn` over `points`, `chunk_points` samples per call."""
        densities, geometries = [], []
        for chunk in points.split(max(1, self.config.chunk_points)):
            with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
                density, geometry = density_fn(chunk)
            densities.append(density.float())
            geometries.append(geometry)
        return torch.cat(densities), torch.cat(geometries)

    def _color(self, geometry: Tensor, directions: Float[Tensor, "m 3"], color_fn: ColorFn) -> Float[Tensor, "m 3"]:
        colours = []
        step = max(1, self.config.chunk_points)
        for start in range(0, geometry.shape[0], step):
            with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
                colours.append(color_fn(geometry[start : start + step], directions[start : start + step]).float())
        return torch.cat(colours)

    def _march(self, rays, origins, directions, t_near, t_far, max_steps, density_fn, color_fn, rgb, acc, depth):
        steps = torch.arange(max_steps, device=self.device, dtype=origins.dtype)
        t = t_near[rays, None] + (steps[None, :] + 0.5) * self.step  # [R, K]
        inside = t < t_far[rays, None]
        points = origins[rays, None, :] + directions[rays, None, :] * t[..., None]
        candidate = inside.reshape(-1)
        flat_points = points.reshape(-1, 3)
        keep = candidate.clone()
        keep[candidate] = self.occupied(flat_points[candidate])
        sample = keep.nonzero()[:, 0]  # row-major: samples of a ray stay contiguous and in depth order
        if sample.numel() == 0:
            return
        ray_of = sample // max_steps  # index into `rays`
        p = flat_points[sample]
        density, geometry = self._density_and_geometry(p, density_fn)
        alpha = 1.0 - torch.exp(-density * self.step)
        # Exclusive segmented cumulative sum of log-transmittance along each ray, in float64: one global running sum
        # over millions of samples minus each ray's start would lose float32 precision.
        log_t = torch.log1p(-alpha.double().clamp(max=1.0 - 1e-9))
        cum = torch.cumsum(log_t, 0)
        first = torch.ones_like(ray_of, dtype=torch.bool)
        first[1:] = ray_of[1:] != ray_of[:-1]
        start_of_ray = torch.zeros(len(rays), dtype=cum.dtype, device=self.device)
        starts = first.nonzero()[:, 0]
        start_of_ray[ray_of[starts]] = (cum - log_t)[starts]
        transmittance = torch.exp(cum - log_t - start_of_ray[ray_of]).float()
        weight = transmittance * alpha
        visible = (transmittance > self.config.transmittance_cutoff) & (weight > 1e-5)
        if visible.any():
            v = visible.nonzero()[:, 0]
            colour = self._color(geometry[v], directions[rays[ray_of[v]]], color_fn)
            w = weight[v]
            target = rays[ray_of[v]]
            rgb.index_add_(0, target, colour * w[:, None])
            acc.index_add_(0, target, w)
            depth.index_add_(0, target, w * t.reshape(-1)[sample[v]])


class FastRenderer:
    """The occupancy-grid renderer bound to one trained head: the grid covers the head under the codes it will see,
    and frames are marched through it and composited over the torso and background."""

    def __init__(self, driver: JeanDriver, config: Optional[FastRendererConfig] = None) -> None:
        self.driver = driver
        self.config = config or FastRendererConfig()
        self.device = driver.device
        self.grid = OccupancyGridMarcher(driver.aabb, self.config)

    @property
    def occupancy(self) -> Optional[Bool[Tensor, "G G G"]]:
        return self.grid.occupancy

    @property
    def build_truncated(self) -> bool:
        """Whether the last build ran out of `max_build_seconds` (unprobed cells were then marked occupied)."""
        return self.grid.build_truncated

    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build_occupancy(self, audio_codes: Tensor, expression_codes: Tensor, probes_per_cell: int = 2) -> float:
        """Mark cells whose density exceeds the threshold under any of the given code pairs (zipped); returns the
        occupied fraction of the box."""
        probes = []
        for a, e in zip(audio_codes.to(self.device), expression_codes.to(self.device)):
            density_fn, _ = self.driver.head_fns(a, e)
            probes.append(lambda points, fn=density_fn: fn(points)[0])
        return self.grid.build(probes, probes_per_cell=probes_per_cell)

    @torch.no_grad()
    def build_occupancy_from_training_clip(self, max_codes: int = 64) -> float:
        """Occupancy over the training clip's own codes (spread over the clip), silence and the neutral expression."""
        audio, expression = self.training_clip_codes(max_codes)
        return self.build_occupancy(audio, expression)

    @torch.no_grad()
    def training_clip_codes(self, max_codes: int = 64) -> Tuple[Tensor, Tensor]:
        """Code pairs that bound the head: `max_codes` frames spread over the training clip, silence with the first
        frame's expression, and the first frame's audio with the neutral (median) expression."""
        driver = self.driver
        n = driver.num_frames
        frames = torch.linspace(0, n - 1, min(max_codes, n), device=self.device).round().long()
        audio = driver.clip_audio_codes(frames)
        expression = driver.clip_expression_codes(frames)
        neutral = driver.expression_codes(driver.neutral_expression(n), frames[:1])
        audio = torch.cat([audio, driver.silence_code(), audio[:1]], 0)
        expression = torch.cat([expression, expression[:1], neutral], 0)
        return audio, expression

    @torch.no_grad()
    def build_occupancy_for_render(self, audio_codes: Tensor, expression_codes: Tensor) -> float:
        """The occupancy a render needs, in bounded time: the training clip's codes (they bound the head's shape) and
        the render's own (mouth shapes the clip never showed), reduced to `max_probe_codes` pairs that span them.

        Probing every code pair costs grid cells x pairs field evaluations (128^3 cells x ~80 pairs took more than 10
        minutes on a CPU). Nearby codes give nearly the same density, and the dilation covers what lies between the
        probed ones, so the pairs are chosen by farthest-point sampling over the concatenated codes: the extremes
        (silence, the widest mouth, the neutral face) are kept and near-duplicates dropped.
        """
        own_audio, own_expression = self.training_clip_codes()
        audio = torch.cat([own_audio, audio_codes.to(self.device).float()], 0)
        expression = torch.cat([own_expression, expression_codes.to(self.device).float()], 0)
        chosen = farthest_point_indices(torch.cat([audio, expression], -1), self.config.max_probe_codes)
        return self.build_occupancy(audio[chosen], expression[chosen])

    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_rays(
        self,
        origins: Float[Tensor, "rays 3"],
        directions: Float[Tensor, "rays 3"],
        audio_code: Float[Tensor, "audio"],
        expression_code: Float[Tensor, "expr"],
    ) -> Dict[str, Tensor]:
        """Head colour (premultiplied), opacity and depth of rays sharing one code pair."""
        if self.grid.occupancy is None:
            self.build_occupancy_from_training_clip()
        density_fn, color_fn = self.driver.head_fns(audio_code, expression_code)
        return self.grid.render_rays(origins.to(self.device), directions.to(self.device), density_fn, color_fn)

    @torch.no_grad()
    def render_frame(
        self,
        c2w: Float[Tensor, "3 4"],
        audio_code: Float[Tensor, "audio"],
        expression_code: Float[Tensor, "expr"],
        width: Optional[int] = None,
        height: Optional[int] = None,
    ) -> Dict[str, Tensor]:
        """A full composited frame (head over torso over background) for one pose and code pair."""
        base_w, base_h = self.driver.image_size
        w, h = width or base_w, height or base_h
        origins, directions, uv = self.driver.pixel_rays(c2w, w, h)
        head = self.render_rays(origins, directions, audio_code, expression_code)
        acc = head["accumulation"][:, None].clamp(0, 1)
        rgb = self.driver.composite(head["rgb"], acc, uv, c2w)
        return {
            "rgb": rgb.reshape(h, w, 3),
            "accumulation": acc.reshape(h, w, 1),
            "depth": (head["depth"] / head["accumulation"].clamp_min(1e-6)).reshape(h, w, 1),
        }


def _all_cells(resolution: int, device) -> Int[Tensor, "n 3"]:
    """Integer indices of every cell of a resolution^3 grid, x-major."""
    axis = torch.arange(resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def farthest_point_indices(points: Float[Tensor, "n d"], count: int) -> Int[Tensor, "k"]:
    """`count` rows that spread over `points` (greedy farthest-point sampling from the row nearest the mean).

    >>> farthest_point_indices(torch.tensor([[0.0], [0.1], [4.0], [10.0]]), 3).tolist()
    [2, 3, 0]
    """
    n = points.shape[0]
    if count >= n:
        return torch.arange(n, device=points.device)
    first = int(torch.cdist(points.mean(0, keepdim=True), points)[0].argmin())
    chosen = [first]
    distance = torch.cdist(points[first : first + 1], points)[0]
    for _ in range(count - 1):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = torch.minimum(distance, torch.cdist(points[nxt : nxt + 1], points)[0])
    return torch.tensor(chosen, device=points.device)
