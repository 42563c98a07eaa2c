"""A Levenberg-Marquardt bundle adjustment of a rigid head seen by one camera over a clip.

Unknowns: per frame a head pose (rotation, translation: 6 numbers), shared by all frames the landmarks' 3D shape S
[K, 3] and the focal length. Residuals: robust (Huber, by iteratively reweighted least squares) reprojection errors in
pixels; second differences of the rotations and translations over time (smoothness); weak priors on the focal length
and on S (the latter fixes the gauge: a similarity transform of the canonical frame changes no projection).

Why Gauss-Newton and not a first-order optimizer: the per-frame poses, the shared shape and the focal length are
strongly coupled (the focal length trades against every frame's depth and the shape's depth), which first-order
methods crawl along: L-BFGS and Adam in torch needed hundreds of steps and still gave focal lengths that changed by 15%
between runs of different lengths on obama_2. The normal equations here are cheap to solve exactly because of their
structure: the poses form a banded block (each frame couples only to its neighbours through the smoothness terms), and
the shared unknowns are few (3K + 1, about 420), so the pose block is eliminated with a banded Cholesky solve
(Schur complement) and each iteration costs well under a second even for thousands of frames. It converges in 10-20
iterations.

Parameterization (OpenGL camera: looks along -z; pixel u = cx + f x / d, v = cy - f y / d, d = -z):
- rotation R_i, updated multiplicatively: R_i <- exp([w]x) R_i;
- translation t_i = exp(q_i) * (a_x, a_y, -f): a_i is the projected head centre in pixels from the principal point and
  exp(q_i) the depth per unit focal length, so a change of f alone keeps every face's image size, and the focal length
  is free to follow the only thing that constrains it, the strength of perspective;
- log f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from scipy.linalg import solveh_banded

_EPS_DEPTH = 1e-3


def hat(v: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 3, 3] cross-product matrices."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    return np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(v.shape[:-1] + (3, 3))


def exp_so3(w: np.ndarray) -> np.ndarray:
    """Rodrigues: [..., 3] rotation vectors -> [..., 3, 3]."""
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    k = hat(w)
    small = theta < 1e-8
    a = np.where(small, 1.0, np.sin(theta) / np.where(small, 1.0, theta))
    b = np.where(small, 0.5, (1.0 - np.cos(theta)) / np.where(small, 1.0, theta**2))
    return np.eye(3) + a * k + b * (k @ k)


@dataclass
class RigidState:
    rotations: np.ndarray  # [N, 3, 3]
    centre: np.ndarray  # [N, 2] pixels
    log_depth: np.ndarray  # [N]
    log_focal: float
    shape: np.ndarray  # [K, 3] cm

    @property
    def focal(self) -> float:
        return float(math.exp(self.log_focal))

    @property
    def translations(self) -> np.ndarray:
        scale = np.exp(self.log_depth)[:, None]
        return scale * np.concatenate([self.centre, np.full((len(self.centre), 1), -self.focal)], axis=1)

    @classmethod
    def from_poses(
        cls, rotations: np.ndarray, translations: np.ndarray, focal: float, shape: np.ndarray
    ) -> "RigidState":
        depth = np.maximum(-translations[:, 2], _EPS_DEPTH)
        return cls(
            rotations=rotations.copy(),
            centre=translations[:, :2] * focal / depth[:, None],
            log_depth=np.log(depth / focal),
            log_focal=math.log(focal),
            shape=shape.copy(),
        )


@dataclass(frozen=True)
class Weights:
    """Loss weights (the data term is 0.5 * sum of weighted squared pixel residuals)."""

    huber_px: float
    smoothness: float
    """Per frame and landmark, on the pixel motion that the head's acceleration (second difference over frames)
    causes: rotation |R_{i-1} - 2 R_i + R_{i+1}|_F times the face's radius in pixels, the projected head centre's
    second difference in pixels, and the face's size change (face width times the second difference of log depth).
    Measured in pixels, not centimetres, so that shrinking the whole scene (the projection-invisible scale) cannot
    buy a smoother path."""
    focal_prior_sigma: float
    """Change of log f (from log f0) that costs as much as 1 px of extra reprojection error at every landmark. Scaled
    with the landmark count on purpose: the landmarks' errors are systematic (expressions, the landmark network's own
    shape bias), not independent noise, so more frames must not buy more certainty about the focal length."""
    shape_prior_sigma: float
    """Standard deviation (cm) of each landmark's 3D position around its initialization, a human face from the
    landmarker's metric model. It fixes the gauge (a similarity transform of the canonical frame changes no
    projection) and settles what a monocular rigid fit cannot: the depth-vs-rotation (bas-relief) ambiguity, along
    which non-rigid motion otherwise drags the focal length away (to 9x MediaPipe's on obama_2 without it)."""


def _project(state: RigidState, cx: float, cy: float):
    """Camera points [N,K,3], pixels [N,K,2], projection Jacobian w.r.t. camera points [N,K,2,3]."""
    rotated = state.shape[None] @ state.rotations.transpose(0, 2, 1)  # [N, K, 3]
    cam = rotated + state.translations[:, None, :]
    f = state.focal
    depth = np.maximum(-cam[..., 2], _EPS_DEPTH)
    x, y = cam[..., 0], cam[..., 1]
    uv = np.stack([cx + f * x / depth, cy - f * y / depth], axis=-1)
    zero = np.zeros_like(x)
    j_cam = np.stack(
        [np.stack([f / depth, zero, f * x / depth**2], -1), np.stack([zero, -f / depth, -f * y / depth**2], -1)],
        axis=-2,
    )
    return rotated, cam, uv, j_cam


def _huber_weights(norms: np.ndarray, delta: float) -> np.ndarray:
    return np.where(norms <= delta, 1.0, delta / np.maximum(norms, 1e-12))


def _huber_cost(norms: np.ndarray, delta: float) -> np.ndarray:
    return np.where(norms <= delta, 0.5 * norms**2, delta * (norms - 0.5 * delta))


class _Problem:
    def __init__(self, target, point_weight, state0: RigidState, cx, cy, weights: Weights, f0: float):
        self.target = target
        self.point_weight = point_weight  # [N, K] (0 on frames without a face)
        self.cx, self.cy = cx, cy
        self.w = weights
        self.log_f0 = math.log(f0)
        self.shape0 = state0.shape.copy()
        n, k = point_weight.shape
        self.n, self.k = n, k
        per_frame = max(1.0, float(point_weight.sum()) / max(1, n))
        extent = target.max(axis=1) - target.min(axis=1)  # [N, 2]
        face_px = float(np.median(extent.max(axis=1))) or 1.0
        self.rot_weight = weights.smoothness * per_frame * (0.5 * face_px) ** 2
        self.trans_weight = weights.smoothness * per_frame
        self.size_px = face_px
        self.focal_weight = float(point_weight.sum()) / max(weights.focal_prior_sigma, 1e-6) ** 2
        self.shape_weight = 1.0 / max(weights.shape_prior_sigma, 1e-6) ** 2

    # ----- cost ---------------------------------------------------------------------------------------------------
    def terms(self, s: RigidState) -> Dict[str, float]:
        _, _, uv, _ = _project(s, self.cx, self.cy)
        norms = np.linalg.norm(uv - self.target, axis=-1)
        out = {"reprojection": float((self.point_weight * _huber_cost(norms, self.w.huber_px)).sum())}
        if self.n >= 3:
            r = s.rotations
            out["smooth_rotation"] = 0.5 * self.rot_weight * float(((r[:-2] - 2 * r[1:-1] + r[2:]) ** 2).sum())
            out["smooth_translation"] = 0.5 * self.trans_weight * float((self._trans_acc(s) ** 2).sum())
        out["focal_prior"] = 0.5 * self.focal_weight * (s.log_focal - self.log_f0) ** 2
        out["shape_prior"] = 0.5 * self.shape_weight * float(((s.shape - self.shape0) ** 2).sum())
        return out

    def _trans_acc(self, s: RigidState) -> np.ndarray:
        """Second differences of (centre x, centre y, face size * log depth), pixels: [N - 2, 3]."""
        p = np.concatenate([s.centre, self.size_px * s.log_depth[:, None]], axis=1)
        return p[:-2] - 2 * p[1:-1] + p[2:]

    def cost(self, s: RigidState) -> float:
        return sum(self.terms(s).values())

    # ----- normal equations -----------------------------------------------------------------------------------------
    def normal_equations(self, s: RigidState):
        """Banded pose block (upper form, 6 per frame), pose-shared block B [6N, P], shared block C [P, P], gradients.

        Shared unknowns are ordered (S_0 xyz, ..., S_{K-1} xyz, log f).
        """
        n, k = self.n, self.k
        f = s.focal
        rotated, cam, uv, j_cam = _project(s, self.cx, self.cy)
        residual = uv - self.target
        w = self.point_weight * _huber_weights(np.linalg.norm(residual, axis=-1), self.w.huber_px)  # [N, K]
        scale = np.exp(s.log_depth)  # [N]
        t = s.translations
        # Pose Jacobian per residual: [N, K, 2, 6] = (rotation w, a_x, a_y, q). Products are written as batched
        # matmuls: numpy's einsum does not use BLAS for these small contractions and was 5-10x slower.
        j_rot = -(j_cam @ hat(rotated))
        j_a = j_cam[..., :2] * scale[:, None, None, None]
        j_q = j_cam @ t[:, None, :, None]
        j_pose = np.concatenate([j_rot, j_a, j_q], axis=-1)
        j_shape = j_cam @ s.rotations[:, None]  # [N, K, 2, 3]
        dt_dlogf = np.zeros((n, 3))
        dt_dlogf[:, 2] = -scale * f
        j_f = (uv - np.array([self.cx, self.cy])) + (j_cam @ dt_dlogf[:, None, :, None])[..., 0]  # [N, K, 2]

        wr = w[..., None] * residual
        w_pose = w[..., None, None] * j_pose
        u_blocks = w_pose.reshape(n, k * 2, 6).transpose(0, 2, 1) @ j_pose.reshape(n, k * 2, 6)  # [N, 6, 6]
        g_pose = (j_pose.reshape(n, k * 2, 6).transpose(0, 2, 1) @ wr.reshape(n, k * 2, 1))[..., 0]  # [N, 6]
        b_shape = (
            w_pose[:, :, 0, :, None] * j_shape[:, :, 0, None, :] + w_pose[:, :, 1, :, None] * j_shape[:, :, 1, None, :]
        )
        b_shape = b_shape.transpose(0, 2, 1, 3).reshape(n * 6, k * 3)
        b_f = (w_pose.reshape(n, k * 2, 6).transpose(0, 2, 1) @ j_f.reshape(n, k * 2, 1)).reshape(n * 6, 1)
        w_shape = (w[..., None, None] * j_shape).transpose(1, 0, 2, 3).reshape(k, n * 2, 3)
        c_shape_blocks = w_shape.transpose(0, 2, 1) @ j_shape.transpose(1, 0, 2, 3).reshape(k, n * 2, 3)  # [K, 3, 3]
        c_sf = (w_shape.transpose(0, 2, 1) @ j_f.transpose(1, 0, 2).reshape(k, n * 2, 1)).reshape(k * 3)
        c_ff = float((w[..., None] * j_f * j_f).sum())
        g_shape = (
            j_shape.transpose(1, 0, 2, 3).reshape(k, n * 2, 3).transpose(0, 2, 1)
            @ wr.transpose(1, 0, 2).reshape(k, n * 2, 1)
        ).reshape(k * 3)
        g_f = float((j_f * wr).sum())

        # Banded pose block: blocks (i, i + d) for d = 0, 1, 2 (smoothness couples frames two apart).
        bands = {0: u_blocks.copy(), 1: np.zeros((max(0, n - 1), 6, 6)), 2: np.zeros((max(0, n - 2), 6, 6))}
        if n >= 3:
            coeff = np.array([1.0, -2.0, 1.0])
            # Rotation smoothness: e_i = vec(R_{i-1} - 2R_i + R_{i+1}), d vec(R_m) / d w_m = vec([e_c]x R_m).
            gens = hat(np.eye(3))  # [3 (c), 3, 3]
            d_rot = np.einsum("cij,njk->ncik", gens, s.rotations, optimize=True).reshape(n, 3, 9)  # [N, 3 (c), 9]
            e_rot = (s.rotations[:-2] - 2 * s.rotations[1:-1] + s.rotations[2:]).reshape(n - 2, 9)
            # Translation smoothness is linear in (a_x, a_y, q): d e / d(a, q)_m = coeff * diag(1, 1, size_px).
            e_trans = self._trans_acc(s)
            scale_q = np.array([1.0, 1.0, self.size_px])
            for a in range(3):
                ja_rot = coeff[a] * d_rot[a : n - 2 + a]  # [N-2, 3, 9] (rows: the 3 rotation unknowns)
                g_pose[a : n - 2 + a, :3] += self.rot_weight * np.einsum("mci,mi->mc", ja_rot, e_rot, optimize=True)
                g_pose[a : n - 2 + a, 3:] += self.trans_weight * coeff[a] * scale_q * e_trans
                for b in range(a, 3):
                    jb_rot = coeff[b] * d_rot[b : n - 2 + b]
                    block = np.zeros((n - 2, 6, 6))
                    block[:, :3, :3] = self.rot_weight * np.einsum("mci,mdi->mcd", ja_rot, jb_rot, optimize=True)
                    block[:, 3:, 3:] = self.trans_weight * coeff[a] * coeff[b] * np.diag(scale_q**2)
                    bands[b - a][a : n - 2 + a] += block

        p = 3 * k + 1
        c = np.zeros((p, p))
        idx = np.arange(k)
        for i in range(3):
            for j in range(3):
                c[3 * idx + i, 3 * idx + j] = c_shape_blocks[:, i, j]
        c[: 3 * k, -1] = c_sf
        c[-1, : 3 * k] = c_sf
        c[-1, -1] = c_ff
        g_shared = np.concatenate([g_shape, [g_f]])
        # Priors.
        c[np.arange(3 * k), np.arange(3 * k)] += self.shape_weight
        g_shared[: 3 * k] += self.shape_weight * (s.shape - self.shape0).reshape(-1)
        c[-1, -1] += self.focal_weight
        g_shared[-1] += self.focal_weight * (s.log_focal - self.log_f0)
        b = np.asfortranarray(np.concatenate([b_shape, b_f], axis=1))  # LAPACK's layout: no copy per solve
        return bands, b, c, g_pose.reshape(-1), g_shared

    @staticmethod
    def banded_upper(bands: Dict[int, np.ndarray], n: int, damping: float) -> np.ndarray:
        """Scalar upper-banded storage (scipy's solveh_banded) of the 6x6-block pentadiagonal pose matrix."""
        size = 6 * n
        upper = 17  # two frames of 6 unknowns, minus one
        ab = np.zeros((upper + 1, size))
        for d, blocks in bands.items():
            for bi in range(6):
                for bj in range(6):
                    offset = 6 * d + bj - bi
                    if offset < 0 or offset > upper or len(blocks) == 0:
                        continue
                    rows = 6 * np.arange(len(blocks)) + bi
                    cols = rows + offset
                    ab[upper - offset, cols] += blocks[:, bi, bj]
        diagonal = ab[upper].copy()
        ab[upper] += damping * np.maximum(diagonal, 1e-9) + 1e-9
        return ab

    def apply(self, s: RigidState, step_pose: np.ndarray, step_shared: np.ndarray) -> RigidState:
        step = step_pose.reshape(self.n, 6)
        return RigidState(
            rotations=exp_so3(step[:, :3]) @ s.rotations,
            centre=s.centre + step[:, 3:5],
            log_depth=s.log_depth + step[:, 5],
            log_focal=s.log_focal + float(step_shared[-1]),
            shape=s.shape + step_shared[:-1].reshape(self.k, 3),
        )


def bundle_adjust_rigid(
    target: np.ndarray,
    point_weight: np.ndarray,
    state: RigidState,
    cx: float,
    cy: float,
    weights: Weights,
    focal_prior_centre: float,
    iterations: int = 30,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[RigidState, Dict[str, float], list]:
    """Levenberg-Marquardt with a Schur complement on the shared unknowns. Returns (state, final terms, cost history).

    Args:
        target: observed landmarks [N, K, 2] (pixels).
        point_weight: [N, K] confidence of each observation (0: ignore, e.g. frames without a face).
        state: the initial guess.
        focal_prior_centre: f0 of the focal prior.
    """
    with single_threaded_blas():
        return _levenberg_marquardt(
            _Problem(target, point_weight, state, cx, cy, weights, focal_prior_centre), state, iterations, progress
        )


def single_threaded_blas():
    """Run BLAS/LAPACK on one thread: these solves are small, and on a busy machine OpenBLAS's spinning workers made
    one banded solve take 5 s instead of 0.03 s (measured on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl the solve is still correct, only slower on a loaded machine
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _levenberg_marquardt(problem: "_Problem", state: RigidState, iterations: int, progress):
    cost = problem.cost(state)
    history = [cost]
    damping = 1e-3
    for _ in range(iterations):
        bands, b, c, g_pose, g_shared = problem.normal_equations(state)
        improved = False
        for _attempt in range(8):
            ab = problem.banded_upper(bands, problem.n, damping)
            c_damped = c + damping * np.diag(np.maximum(np.diag(c), 1e-9))
            # Schur complement: eliminate the (banded) pose block, solve the small shared system, back-substitute.
            a_inv_b = solveh_banded(ab, b, lower=False, check_finite=False)
            a_inv_g = solveh_banded(ab, g_pose, lower=False, check_finite=False)
            reduced = c_damped - b.T @ a_inv_b
            step_shared = np.linalg.solve(reduced, -(g_shared - b.T @ a_inv_g))
            step_pose = -(a_inv_g + a_inv_b @ step_shared)
            candidate = problem.apply(state, step_pose, step_shared)
            new_cost = problem.cost(candidate)
            if np.isfinite(new_cost) and new_cost < cost:
                state, improved = candidate, True
                relative = (cost - new_cost) / max(cost, 1e-12)
                cost = new_cost
                damping = max(damping / 3.0, 1e-7)
                break
            damping *= 4.0
        history.append(cost)
        if progress is not None:
            progress(1)
        if not improved or relative < 1e-7:
            break
    return state, problem.terms(state), history
