"""Cameras by bundle adjustment of the face over the whole clip.

The head is static in a canonical frame and the camera moves. Unknowns: one focal length (f_x = f_y, principal point
at the crop centre), a head pose per frame (rotation, translation), a shared rigid 3D landmark shape S [L, 3] and small
per-frame non-rigid offsets D [N, L, 3] (expressions; L2-regularized). Projections of S + D_i under pose i must land on
the 2D landmarks of frame i (robust Huber loss in pixels); poses change smoothly over time; the focal length has a
weak prior at MediaPipe's assumed field of view, and S a weak prior at its initialization (which fixes the gauge:
scale, placement and orientation of the canonical frame).

Conventions (docs/dataset_contract.md): the canonical head frame has x to the subject's left (image right in a frontal
view), y up, z toward a frontal camera, centred on the landmarks; camera coordinates are OpenGL's (the camera looks
along -z, y up), so pixel (u, v) of a point X_c is u = cx + f X_c.x / (-X_c.z), v = cy - f X_c.y / (-X_c.z), the
projection nerfstudio's ray directions ((u - cx) / f, -(v - cy) / f, -1) invert. Lengths are centimetres inside the
solver (MediaPipe's canonical face model is metric) and scene units (`scene_scale_cm` each) in the outputs.

Initialization comes from MediaPipe's facial transformation matrices (canonical face model in cm -> OpenGL camera with a
63-degree vertical field of view; checked by projecting the model, see tests) and the back-projected landmarks. Without
a backend pose (face-alignment), the shape starts as the back-projected median face on an ellipsoid and the poses from
OpenCV's PnP.

Translation is parameterized as t_i = exp(q_i) * (a_x, a_y, -f): the projected head centre a_i (pixels) and the log
depth per unit focal q_i. Changing f then leaves every face's image size unchanged, so the solver can move the focal
length along the only direction the data constrain it in (the strength of perspective) without having to drag every
frame's depth along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float

from jean_nerfstudio.process.bundle_adjust import RigidState, Weights, bundle_adjust_rigid, single_threaded_blas
from jean_nerfstudio.process.config import BundleAdjustConfig
from jean_nerfstudio.landmarker import MEDIAPIPE_VERTICAL_FOV_DEG

# Scene box margins around the landmarks' bounding box, as fractions of its size per axis: the landmarks stop at the
# hairline, the ears and the face's front, but the head goes on with hair above, the skull behind and hair beside.
BOX_MARGIN_X = (0.35, 0.35)  # (toward -x, toward +x)
BOX_MARGIN_Y = (0.25, 0.65)  # (below the chin, above the hairline)
BOX_MARGIN_Z = (1.35, 0.25)  # (behind the ears: the skull, in front of the nose)


def default_focal(image_size: int) -> float:
    """Focal length (pixels) of MediaPipe's assumed camera: 63-degree vertical field of view."""
    return 0.5 * image_size / math.tan(math.radians(MEDIAPIPE_VERTICAL_FOV_DEG) / 2.0)


# ---------------------------------------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class CameraSolution:
    """Result of the bundle adjustment (lengths in cm, OpenGL camera axes)."""

    focal: float
    cx: float
    cy: float
    rotations: np.ndarray
    """[N, 3, 3] canonical head frame -> camera."""
    translations: np.ndarray
    """[N, 3] in cm."""
    shape: np.ndarray
    """[L, 3] shared rigid landmarks in the canonical frame, cm (centred: see `recentre`)."""
    offsets: np.ndarray
    """[N, L, 3] per-frame non-rigid offsets, cm."""
    rigid_errors: np.ndarray
    """[n] per-landmark reprojection errors (px) of the shared shape S over frames with a detected face."""
    full_errors: np.ndarray
    """[n] the same with the per-frame offsets (S + D_i): what landmarks_canonical + the cameras reproduce."""
    loss_history: list
    loss_terms: Dict[str, float]
    """The rigid solve's final loss, term by term."""

    def head_pose(self, scene_scale_cm: float) -> np.ndarray:
        """[N, 4, 4] canonical -> camera in scene units."""
        pose = np.tile(np.eye(4), (len(self.rotations), 1, 1))
        pose[:, :3, :3] = self.rotations
        pose[:, :3, 3] = self.translations / scene_scale_cm
        return pose

    def camera_to_world(self, scene_scale_cm: float) -> np.ndarray:
        """[N, 4, 4] nerfstudio `transform_matrix` (camera -> canonical head frame, OpenGL camera axes)."""
        c2w = np.tile(np.eye(4), (len(self.rotations), 1, 1))
        rt = np.transpose(self.rotations, (0, 2, 1))
        c2w[:, :3, :3] = rt
        c2w[:, :3, 3] = -np.einsum("nij,nj->ni", rt, self.translations / scene_scale_cm)
        return c2w


def _backproject(
    points_2d: np.ndarray,
    depth_px: np.ndarray,
    rotations: np.ndarray,
    translations: np.ndarray,
    focal: float,
    cx: float,
    cy: float,
) -> np.ndarray:
    """Landmarks of each frame lifted into the canonical frame with the frame's pose: [N, L, 3] (cm)."""
    centre_depth = -translations[:, 2:3]  # [N, 1] cm
    depth = centre_depth + depth_px * centre_depth / focal  # pixel-unit relative depth -> cm at the head's distance
    cam = np.stack(
        [(points_2d[..., 0] - cx) / focal * depth, -(points_2d[..., 1] - cy) / focal * depth, -depth], axis=-1
    )
    return np.einsum("nji,nlj->nli", rotations, cam - translations[:, None, :])


def _ellipsoid_face(points_2d: np.ndarray, depth_cm: float, focal: float, cx: float, cy: float) -> np.ndarray:
    """A frontal face shape from one frame's 2D landmarks: back-projected at one depth, bulged onto an ellipsoid."""
    x = (points_2d[:, 0] - cx) / focal * depth_cm
    y = -(points_2d[:, 1] - cy) / focal * depth_cm
    x = x - x.mean()
    y = y - y.mean()
    a = max(1e-3, np.abs(x).max()) * 1.15
    b = max(1e-3, np.abs(y).max()) * 1.3
    z = 0.7 * a * np.sqrt(np.clip(1.0 - (x / a) ** 2 - (y / b) ** 2, 0.0, 1.0))
    return np.stack([x, y, z], axis=-1)


def _pnp_poses(
    shape: np.ndarray, points_2d: np.ndarray, focal: float, cx: float, cy: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame OpenCV PnP of a fixed shape, returned in OpenGL camera axes."""
    import cv2

    k = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) <-> OpenGL camera (y up, z backward)
    # The canonical frame has y up and z toward the camera: in OpenCV's object convention that is a flipped frame.
    rotations, translations = [], []
    guess = None
    for frame in points_2d:
        ok, rvec, tvec = cv2.solvePnP(
            shape @ flip, frame.astype(np.float64), k, None,
            rvec=None if guess is None else guess[0].copy(), tvec=None if guess is None else guess[1].copy(),
            useExtrinsicGuess=guess is not None, flags=cv2.SOLVEPNP_ITERATIVE,
        )  # fmt: skip
        if ok:
            guess = (rvec, tvec)
        rvec, tvec = guess if guess is not None else (np.zeros((3, 1)), np.array([[0.0], [0.0], [50.0]]))
        r_cv = cv2.Rodrigues(rvec)[0]
        rotations.append(flip @ r_cv @ flip)
        translations.append(flip @ tvec.reshape(3))
    return np.stack(rotations), np.stack(translations)


def deformable_weights(num_points: int, groups: Dict[str, Sequence[int]]) -> np.ndarray:
    """Per-landmark factor (< 1 where faces move with expressions and speech, gaze for irises)."""
    weights = np.ones(num_points)
    for name in ("eye_left", "eye_right", "brow_left", "brow_right"):
        weights[list(groups.get(name, []))] = 0.5
    for name in ("lips_outer", "lips_inner", "jaw"):
        weights[list(groups.get(name, []))] = 0.3
    if num_points > 468:  # MediaPipe's irises follow the gaze
        weights[468:] = 0.3
    return weights


def rigid_subset(num_points: int, groups: Dict[str, Sequence[int]], stride: int = 4) -> np.ndarray:
    """Landmarks the rigid solve uses: points anchored on the face's surface. The face oval and jaw points are left
    out: they trace the visible outline, which slides over the head as it turns, and a rigid fit bends its shape and
    focal length to follow them (on obama_2 they pulled the head to 10 cm from the camera). Irises follow the gaze.
    The eyes, brows, nose and lips all stay; MediaPipe's other (dense, redundant) points are thinned to every
    `stride`-th, which pins the pose as well at a fraction of the cost."""
    outline = {int(i) for name in ("face_oval", "jaw") for i in groups.get(name, [])}
    named = {int(i) for name in ("eye_left", "eye_right", "brow_left", "brow_right", "nose", "lips_outer", "lips_inner")
             for i in groups.get(name, [])}  # fmt: skip
    surface = [i for i in range(min(num_points, 468)) if i not in outline]
    chosen = named | set(surface[::stride])
    return np.array(sorted(chosen - outline), dtype=np.int64)


def _projection_jacobian(
    points: np.ndarray, rotations: np.ndarray, translations: np.ndarray, focal: float, cx: float, cy: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Projections [N, L, 2] of canonical points [N, L, 3] and their Jacobians [N, L, 2, 3] w.r.t. those points."""
    cam = np.einsum("nij,nlj->nli", rotations, points) + translations[:, None, :]
    a, b, depth = cam[..., 0], cam[..., 1], np.maximum(-cam[..., 2], 1e-3)
    uv = np.stack([cx + focal * a / depth, cy - focal * b / depth], axis=-1)
    zero = np.zeros_like(a)
    j_cam = np.stack(
        [
            np.stack([focal / depth, zero, focal * a / depth**2], axis=-1),
            np.stack([zero, -focal / depth, -focal * b / depth**2], axis=-1),
        ],
        axis=-2,
    )  # [N, L, 2, 3]
    return uv, np.einsum("nlij,njk->nlik", j_cam, rotations)


def _huber_weights(residual_norm: np.ndarray, delta: float) -> np.ndarray:
    """IRLS weights of the Huber loss: 1 inside delta, delta / r outside."""
    return np.where(residual_norm <= delta, 1.0, delta / np.maximum(residual_norm, 1e-12))


def triangulate_shape(
    points_2d: np.ndarray, weights: np.ndarray, rotations: np.ndarray, translations: np.ndarray, focal: float,
    cx: float, cy: float, shape: np.ndarray, delta: float, prior_sigma: float, iterations: int = 6,
) -> np.ndarray:  # fmt: skip
    """Robust Gauss-Newton refinement of every landmark's shared 3D position with the poses fixed: [L, 3].

    Each point keeps the bundle adjustment's shape prior (N(initial, prior_sigma^2) in cm), so a point seen only along
    nearly the same ray (an outline point) stays where the face model puts it instead of sliding along the ray.
    """
    n = len(rotations)
    start = shape.copy()
    shape = shape.copy()
    prior = 1.0 / max(prior_sigma, 1e-6) ** 2
    for _ in range(iterations):
        uv, jac = _projection_jacobian(
            np.broadcast_to(shape, (n,) + shape.shape), rotations, translations, focal, cx, cy
        )
        residual = uv - points_2d
        w = weights * _huber_weights(np.linalg.norm(residual, axis=-1), delta)
        wj = (w[..., None, None] * jac).transpose(1, 0, 2, 3).reshape(len(shape), n * 2, 3)
        jj = jac.transpose(1, 0, 2, 3).reshape(len(shape), n * 2, 3)
        hessian = wj.transpose(0, 2, 1) @ jj + prior * np.eye(3)
        gradient = (wj.transpose(0, 2, 1) @ residual.transpose(1, 0, 2).reshape(len(shape), n * 2, 1))[..., 0]
        gradient += prior * (shape - start)
        shape -= np.linalg.solve(hessian, gradient[..., None])[..., 0]
    return shape


def solve_offsets(
    points_2d: np.ndarray, rotations: np.ndarray, translations: np.ndarray, focal: float, cx: float, cy: float,
    shape: np.ndarray, stiffness: np.ndarray, iterations: int = 2,
) -> np.ndarray:  # fmt: skip
    """Per-frame non-rigid offsets D [N, L, 3] minimizing |proj(S + D) - x|^2 / 2 + stiffness |D|^2 (Gauss-Newton).

    Frames are independent once the poses are fixed, so this is one small regularized least-squares problem per
    landmark and frame, all solved at once. The regularizer keeps offsets off the viewing ray (depth along it is not
    observed) and leaves a fraction of each residual unexplained, so landmark noise is not all copied into D.
    """
    n = len(rotations)
    offsets = np.zeros((n,) + shape.shape)
    eye = np.eye(3)
    for _ in range(iterations):
        uv, jac = _projection_jacobian(shape[None] + offsets, rotations, translations, focal, cx, cy)
        residual = uv - points_2d
        lam = 2.0 * stiffness[None, :, None, None] * eye
        hessian = np.einsum("nlji,nljk->nlik", jac, jac) + lam
        gradient = np.einsum("nlji,nlj->nli", jac, residual) + 2.0 * stiffness[None, :, None] * offsets
        offsets -= np.linalg.solve(hessian, gradient[..., None])[..., 0]
    return offsets


def solve_cameras(
    points_2d: Float[np.ndarray, "N L 2"],
    detected: np.ndarray,
    image_size: int,
    groups: Dict[str, Sequence[int]],
    config: BundleAdjustConfig,
    backend_pose: Optional[Float[np.ndarray, "N 4 4"]] = None,
    depth_px: Optional[Float[np.ndarray, "N L"]] = None,
    focal_init: Optional[float] = None,
    progress=None,
) -> CameraSolution:
    """Bundle-adjust focal length, head poses, shape and offsets over the clip (all frames at once, vectorized).

    Two steps. (1) The rigid solve: focal length, every frame's pose and the shared shape of ~140 contour landmarks,
    by Levenberg-Marquardt on the robust reprojection loss with temporal smoothness and the priors
    (`bundle_adjust.py`). (2) With the
    cameras fixed, every landmark's shared position (robust Gauss-Newton triangulation) and the per-frame non-rigid
    offsets (regularized Gauss-Newton), in closed form per landmark, for all 478 points at once.

    Args:
        points_2d: landmarks in crop pixels.
        detected: bool [N]; frames without a face get no reprojection term (their pose follows the smoothness).
        image_size: crop side S; the principal point is (S/2, S/2).
        groups: landmark index groups (contract names) of this layout.
        config: weights and iterations.
        backend_pose: the landmarker's per-frame pose (MediaPipe's matrices), or None.
        depth_px: the landmarker's relative depth per landmark in pixel units (MediaPipe's z), or None.
        focal_init: starting focal length (default: MediaPipe's 63-degree camera), also the prior's centre.
        progress: callable(k) called after each Levenberg-Marquardt iteration.
    """
    n, num_points = points_2d.shape[:2]
    cx = cy = image_size / 2.0
    f0 = float(focal_init or default_focal(image_size))
    detected = np.asarray(detected, bool)
    if not detected.any():
        raise ValueError("no frame with a detected face")
    points_2d = np.asarray(points_2d, dtype=np.float64)
    if backend_pose is not None:
        rotations0 = orthonormal(backend_pose[:, :3, :3].astype(np.float64))
        translations0 = backend_pose[:, :3, 3].astype(np.float64)
        depth = depth_px if depth_px is not None else np.zeros(points_2d.shape[:2])
        lifted = _backproject(points_2d, depth, rotations0, translations0, f0, cx, cy)
        shape0 = np.median(lifted[detected], axis=0)
    else:
        reference = np.median(points_2d[detected], axis=0)
        face_width_px = float(np.ptp(reference[:, 0]))
        distance = f0 * 14.0 / max(face_width_px, 1.0)  # a face is about 14 cm wide across the landmarks
        shape0 = _ellipsoid_face(reference, distance, f0, cx, cy)
        rotations0, translations0 = _pnp_poses(shape0, points_2d, f0, cx, cy)
    # Start centred: the canonical origin at the landmarks' centre.
    centre = 0.5 * (shape0.min(axis=0) + shape0.max(axis=0))
    shape0 = shape0 - centre
    translations0 = translations0 + np.einsum("nij,j->ni", rotations0, centre)

    prior_sigma = config.shape_prior_sigma if backend_pose is not None else config.shape_prior_sigma_no_pose
    subset = rigid_subset(num_points, groups)
    point_factor = deformable_weights(num_points, groups)
    delta = config.huber_px * image_size / 512.0
    weights = Weights(
        huber_px=delta,
        smoothness=config.smoothness,
        focal_prior_sigma=config.focal_prior_sigma,
        shape_prior_sigma=prior_sigma,
    )
    observation_weight = detected[:, None].astype(np.float64) * point_factor[subset][None, :]
    start = RigidState.from_poses(rotations0, translations0, f0, shape0[subset])
    state, loss_terms, history = bundle_adjust_rigid(
        points_2d[:, subset], observation_weight, start, cx, cy, weights, f0, config.iterations, progress
    )
    rotations, translations, focal = state.rotations, state.translations, state.focal

    # Step 2: all landmarks, cameras fixed.
    # The shared positions of all landmarks: a few hundred frames pin them as well as thousands would.
    frames = np.nonzero(detected)[0]
    frames = frames[np.linspace(0, len(frames) - 1, min(len(frames), 200)).round().astype(int)]
    shape = triangulate_shape(
        points_2d[frames], point_factor[None, :].repeat(len(frames), 0), rotations[frames], translations[frames], focal,
        cx, cy, shape0, delta, prior_sigma,
    )  # fmt: skip
    distance = float(np.median(np.linalg.norm(translations, axis=1)))
    stiffness = config.offset_weight * (focal / distance) ** 2 * point_factor
    offsets = solve_offsets(points_2d, rotations, translations, focal, cx, cy, shape, stiffness)
    offsets[~detected] = 0.0  # interpolated landmarks carry no expression evidence
    rigid_uv, _ = _projection_jacobian(
        np.broadcast_to(shape, (n,) + shape.shape), rotations, translations, focal, cx, cy
    )
    full_uv, _ = _projection_jacobian(shape[None] + offsets, rotations, translations, focal, cx, cy)
    solution = CameraSolution(
        focal=float(focal),
        cx=cx,
        cy=cy,
        rotations=rotations,
        translations=translations,
        shape=shape,
        offsets=offsets,
        rigid_errors=np.linalg.norm(rigid_uv - points_2d, axis=-1)[detected].reshape(-1),
        full_errors=np.linalg.norm(full_uv - points_2d, axis=-1)[detected].reshape(-1),
        loss_history=history,
        loss_terms=loss_terms,
    )
    return recentre(solution)


def orthonormal(rotations: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (MediaPipe's matrices are rotations up to float noise)."""
    u, _, vt = np.linalg.svd(rotations)
    fix = np.sign(np.linalg.det(u @ vt))
    u[..., -1] *= fix[..., None]
    return u @ vt


def recentre(solution: CameraSolution) -> CameraSolution:
    """Move the canonical origin to the centre of the shared shape's bounding box (poses compensate exactly)."""
    centre = 0.5 * (solution.shape.min(axis=0) + solution.shape.max(axis=0))
    solution.shape = solution.shape - centre
    solution.translations = solution.translations + np.einsum("nij,j->ni", solution.rotations, centre)
    return solution


def error_summary(errors: np.ndarray) -> Dict[str, float]:
    if errors.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan")}
    return {
        "mean": round(float(errors.mean()), 3),
        "median": round(float(np.median(errors)), 3),
        "p95": round(float(np.percentile(errors, 95)), 3),
    }


def scene_box(shape_scene: Float[np.ndarray, "L 3"]) -> np.ndarray:
    """[[x0, y0, z0], [x1, y1, z1]] bounding the head with its hair, from the canonical landmarks (scene units)."""
    lo, hi = shape_scene.min(axis=0), shape_scene.max(axis=0)
    size = hi - lo
    margins = np.array([BOX_MARGIN_X, BOX_MARGIN_Y, BOX_MARGIN_Z])  # [3, (low, high)]
    return np.stack([lo - margins[:, 0] * size, hi + margins[:, 1] * size])


def near_far(c2w: Float[np.ndarray, "N 4 4"], box: np.ndarray) -> Tuple[float, float]:
    """Ray distances that bound the scene box from every camera, with 10% slack on each side."""
    centres = c2w[:, :3, 3]
    closest = np.clip(centres, box[0], box[1])
    near = float(np.linalg.norm(centres - closest, axis=1).min())
    corners = np.array([[x, y, z] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
    far = float(np.linalg.norm(centres[:, None, :] - corners[None], axis=-1).max())
    return max(1e-3, 0.9 * near), 1.1 * far


def reproject_canonical(
    canonical: Float[np.ndarray, "N L 3"], c2w: Float[np.ndarray, "N 4 4"], focal: float, cx: float, cy: float
) -> np.ndarray:
    """Project canonical (world) points through nerfstudio cameras: the inverse of its ray directions
    ((u - cx) / f, -(v - cy) / f, -1) rotated by the camera-to-world matrix. [N, L, 2] pixels."""
    rotation = c2w[:, :3, :3]
    origin = c2w[:, :3, 3]
    local = np.einsum("nji,nlj->nli", rotation, canonical - origin[:, None, :])  # R^T (X - o)
    depth = -local[..., 2]
    return np.stack([cx + focal * local[..., 0] / depth, cy - focal * local[..., 1] / depth], axis=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------------
def run_cameras(ctx) -> Dict[str, Any]:
    """Stage `cameras`: bundle adjustment; writes head_pose.npy, landmarks_canonical.npy and the camera facts."""
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.utils.atomic import save_npy

    cfg = ctx.config
    marks = ctx.result("landmarks")
    image_size = int(ctx.result("crop")["crop"]["image_size"])
    features = ctx.root / C.FEATURES_DIR
    points_2d = np.load(features / C.FEATURE_FILES["landmarks_2d"])
    detected = np.load(features / C.FEATURE_FILES["face_detected"])
    depth_px = np.load(ctx.work_dir / "landmarks_depth.npy")
    backend_pose = np.load(ctx.work_dir / "backend_pose.npy") if marks["has_backend_pose"] else None
    ba = cfg.bundle_adjust
    ctx.progress.start("cameras", ba.iterations, unit="iters")
    with single_threaded_blas():
        solution = solve_cameras(
            points_2d, detected, image_size, LANDMARK_GROUPS[marks["backend"]], ba, backend_pose, depth_px,
            progress=lambda k: ctx.progress.advance("cameras", k),
        )  # fmt: skip
    ctx.progress.advance("cameras", max(0, ba.iterations + 1 - len(solution.loss_history)))  # converged early
    scale = float(cfg.scene_scale_cm)
    head_pose = solution.head_pose(scale)
    canonical = (solution.shape[None] + solution.offsets) / scale
    box = scene_box(solution.shape / scale)
    c2w = solution.camera_to_world(scale)
    near, far = near_far(c2w, box)
    # The check the contract promises: canonical landmarks through the saved cameras land on the 2D landmarks.
    check = np.linalg.norm(
        reproject_canonical(canonical, c2w, solution.focal, solution.cx, solution.cy) - points_2d, axis=-1
    )
    save_npy(features / C.FEATURE_FILES["head_pose"], head_pose.astype(np.float32))
    save_npy(features / C.FEATURE_FILES["landmarks_canonical"], canonical.astype(np.float32))
    save_npy(ctx.work_dir / "camera_to_world.npy", c2w)
    rigid = error_summary(solution.rigid_errors)
    full = error_summary(solution.full_errors)
    distance_cm = float(np.median(np.linalg.norm(solution.translations, axis=1)))
    if rigid["median"] > 0.05 * image_size:
        ctx.warn(
            f"{cfg.video}: the head poses fit the landmarks poorly (median reprojection error "
            f"{rigid['median']:.1f} px); "
            "check the landmark overlay before training."
        )
    return {
        "num_frames": int(len(points_2d)),
        "focal": round(solution.focal, 4),
        "focal_init": round(default_focal(image_size), 4),
        "cx": solution.cx,
        "cy": solution.cy,
        "scene_scale_cm": scale,
        "scene_box": np.round(box, 5).tolist(),
        "near": round(near, 5),
        "far": round(far, 5),
        "median_distance_cm": round(distance_cm, 2),
        "reprojection_error_px": rigid,
        "reprojection_error_nonrigid_px": full,
        "saved_camera_check_px": error_summary(check[detected].reshape(-1)),
        "final_loss": round(solution.loss_history[-1], 6),
    }
