"""Driving a trained JEAN model with new signals: the one typed surface the renderer, the evaluator, the demo and the
fast renderer build on.

A trained model renders any camera once each ray knows its audio code, expression code and pose. `JeanDriver` makes
those from new inputs (a waveform in any language, another clip's expression sequence, a pose sequence), converts
between training-clip frames and camera times, and lends the fast renderer the head field as closures:

>>> driver = JeanDriver(model)  # doctest: +SKIP
>>> audio = driver.audio_codes(waveform_16k, num_frames=50, fps=25.0)             # [50, Da]  # doctest: +SKIP
>>> other = driver.expression_of_clip("data/obama_3")          # ExpressionSequence (values, fps)  # doctest: +SKIP
>>> codes = driver.expression_codes(other.values)                                 # [N_other, De]  # doctest: +SKIP
>>> cameras = driver.cameras(driver.clip_poses()[:50], audio, codes[:50])       # doctest: +SKIP
>>> driver.render(cameras[0:1])["rgb"].shape                                      # [H, W, 3]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.source import ExpressionSequence
from jean_nerfstudio.models.jean_model import JeanModel, composite_layers, head_pose_features, sample_image

DensityFn = Callable[[Float[Tensor, "n 3"]], Tuple[Float[Tensor, "n"], Float[Tensor, "n geometry"]]]
"""Positions -> (density, geometry features): the head field under one code pair."""
ColorFn = Callable[[Float[Tensor, "n geometry"], Float[Tensor, "n 3"]], Float[Tensor, "n 3"]]
"""(geometry features, ray directions) -> colour."""


def ping_pong_indices(num_frames: int, length: int) -> np.ndarray:
    """Frame indices 0..length-1 played forward then backward (no jump at the loop point).

    >>> ping_pong_indices(7, 3).tolist()
    [0, 1, 2, 1, 0, 1, 2]
    """
    if length <= 1:
        return np.zeros(num_frames, dtype=np.int64)
    period = 2 * (length - 1)
    t = np.arange(num_frames) % period
    return np.where(t < length, t, period - t).astype(np.int64)


class JeanDriver:
    """The public driving surface of one trained `JeanModel` (codes, cameras, composite, field closures)."""

    def __init__(self, model: JeanModel) -> None:
        self.model = model

    # ----- the training clip ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_frames(self) -> int:
        """Frames of the training clip."""
        return int(self.model.num_frames)

    @property
    def fps(self) -> float:
        """Frame rate of the training clip."""
        return float(self.model.fps)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(width, height) of the training frames."""
        return int(self.model.image_width), int(self.model.image_height)

    @property
    def scene_scale_cm(self) -> float:
        """Centimetres per scene unit of the training clip (another clip's poses are rescaled to it)."""
        return self.model.clip.scene_scale_cm

    @property
    def aabb(self) -> Float[Tensor, "2 3"]:
        """The head box (scene units), on the model's device."""
        return self.model.scene_box.aabb.to(self.device)

    def clip_poses(self) -> Float[Tensor, "frames 3 4"]:
        """Camera-to-world matrices of the training clip's frames (CPU)."""
        return self.model.clip_camera_to_worlds.cpu()

    def time_of_frame(self, frames: Tensor) -> Tensor:
        """Camera time of training-clip frames (what the viewer's time slider and the dataparser set)."""
        return C.frame_to_time(frames.float(), self.num_frames)

    def frame_of_time(self, times: Tensor) -> Int[Tensor, "..."]:
        """The training-clip frame a camera time stands for."""
        return C.time_to_frame(times, self.num_frames)

    # ----- audio --------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def audio_codes(self, waveform: Float[np.ndarray, "samples"], num_frames: int, fps: float) -> Float[Tensor, "frames code"]:
        """Audio codes of `num_frames` video frames at `fps` of a 16 kHz mono waveform, through the model's own front
        end and encoder (exactly as the training clip's audio was encoded)."""
        return self.model.audio.waveform_codes(waveform, num_frames, fps)

    @torch.no_grad()
    def clip_audio_codes(self, frames: Int[Tensor, "n"]) -> Float[Tensor, "n code"]:
        """Audio codes of training-clip frames."""
        return self.model.audio.frame_codes(frames.to(self.device))

    @torch.no_grad()
    def silence_code(self) -> Float[Tensor, "1 code"]:
        """The audio code of digital silence (a closed, still mouth)."""
        return self.model.audio.silence_code()

    # ----- expression ---------------------------------------------------------------------------------------------------
    def clip_expression(self) -> ExpressionSequence:
        """The training clip's expression inputs and their fps."""
        return self.model.expression.clip_sequence()

    def neutral_expression(self, num_frames: int) -> Float[Tensor, "frames features"]:
        """The training clip's median expression inputs, held for `num_frames` frames."""
        return self.model.expression.neutral_inputs(num_frames)

    def expression_of_clip(self, clip_dir: Union[Path, str, ProcessedClip]) -> ExpressionSequence:
        """Another processed clip's expression inputs in this model's layout, with the fps they are at (expression
        transfer): play them by that fps.

        Raises:
            DatasetError: the folder is not a finished dataset, or its landmark layout differs from the model's.
        """
        clip = clip_dir if isinstance(clip_dir, ProcessedClip) else ProcessedClip.open(clip_dir)
        return self.model.expression.sequence_of(clip)

    @torch.no_grad()
    def expression_codes(
        self, inputs: Float[Tensor, "frames features"], frames: Optional[Int[Tensor, "n"]] = None, chunk: int = 256
    ) -> Float[Tensor, "n code"]:
        """Expression codes of an input sequence (the clip's, another clip's, edited ones): of every frame, or of the
        given `frames` only (a frame's code depends on the frames around it, so the sequence is passed whole). At most
        `chunk` frames at a time: a long sequence is encoded one receptive-field window per frame, memory stays bounded.
        """
        inputs = inputs.to(self.device)
        frames = torch.arange(inputs.shape[0], device=self.device) if frames is None else frames.to(self.device)
        return torch.cat([self.model.expression.codes(inputs, part) for part in frames.split(chunk)], dim=0)

    @torch.no_grad()
    def clip_expression_codes(self, frames: Int[Tensor, "n"]) -> Float[Tensor, "n code"]:
        """Expression codes of training-clip frames."""
        return self.model.expression.frame_codes(frames.to(self.device))

    # ----- cameras and rendering ----------------------------------------------------------------------------------------
    def cameras(
        self,
        camera_to_worlds: Float[Tensor, "frames 3 4"],
        audio_codes: Float[Tensor, "frames audio"],
        expression_codes: Float[Tensor, "frames expr"],
        pose_frames: Optional[Tensor] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
    ) -> Cameras:
        """Cameras (one per output frame) that carry their own codes and pose, ready for `render`.

        Args:
            camera_to_worlds: head poses as camera-to-world matrices (the training clip's, looped, or another clip's).
            audio_codes, expression_codes: per-frame codes.
            pose_frames: training-clip frame index per output frame (kept for viewer-style time; optional).
            width, height: output size (default: the training resolution; intrinsics scale with it).
        """
        n = camera_to_worlds.shape[0]
        if not (audio_codes.shape[0] == expression_codes.shape[0] == n):
            raise ValueError(f"{n} poses, {audio_codes.shape[0]} audio codes and {expression_codes.shape[0]} expression codes")
        fx, fy, cx, cy = [float(v) for v in self.model.intrinsics]
        base_w, base_h = self.image_size
        out_w, out_h = width or base_w, height or base_h
        sx, sy = out_w / base_w, out_h / base_h
        frames = (pose_frames if pose_frames is not None else torch.zeros(n)).float().reshape(n, 1).cpu()
        return Cameras(
            camera_to_worlds=camera_to_worlds.float().cpu(),
            fx=fx * sx, fy=fy * sy, cx=cx * sx, cy=cy * sy, width=out_w, height=out_h,
            camera_type=CameraType.PERSPECTIVE,
            times=self.time_of_frame(frames),
            metadata={
                C.META_POSE: camera_to_worlds.float().reshape(n, 12).cpu(),
                C.META_AUDIO_CODE: audio_codes.float().cpu(),
                C.META_EXPRESSION_CODE: expression_codes.float().cpu(),
                C.META_FRAME_INDEX: frames,
            },
        )

    @torch.no_grad()
    def render(self, camera: Cameras) -> Dict[str, Tensor]:
        """All outputs of one camera through nerfstudio's reference (proposal-sampler) path."""
        return self.model.get_outputs_for_camera(camera.to(self.device))

    # ----- the pieces the fast renderer composes ------------------------------------------------------------------------
    def head_fns(self, audio_code: Float[Tensor, "audio"], expression_code: Float[Tensor, "expr"]) -> Tuple[DensityFn, ColorFn]:
        """The head field under one code pair as (density_fn, color_fn) closures, the shape nerfacc's estimators take:
        the renderer decides where to sample, the closures say what is there."""
        field = self.model.field
        audio_code, expression_code = audio_code.to(self.device), expression_code.to(self.device)

        def density_fn(points: Float[Tensor, "n 3"]) -> Tuple[Float[Tensor, "n"], Float[Tensor, "n geometry"]]:
            out = field.density_and_geometry(points, audio_code[None], expression_code[None])  # broadcast over points
            return out["density"][:, 0], out["geometry"]

        def color_fn(geometry: Float[Tensor, "n geometry"], directions: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
            return field.color(geometry, directions)

        return density_fn, color_fn

    def pixel_rays(
        self, c2w: Float[Tensor, "3 4"], width: int, height: int
    ) -> Tuple[Float[Tensor, "pixels 3"], Float[Tensor, "pixels 3"], Float[Tensor, "pixels 2"]]:
        """Origins, unit directions and normalized pixel positions (uv) of every pixel centre of a `width` x `height`
        frame from pose `c2w`, with the training intrinsics scaled to that size (row-major pixels)."""
        base_w, base_h = self.image_size
        sx, sy = width / base_w, height / base_h
        fx, fy, cx, cy = [float(v) for v in self.model.intrinsics]
        c2w = c2w.to(self.device).float()
        ys, xs = torch.meshgrid(torch.arange(height, device=self.device), torch.arange(width, device=self.device), indexing="ij")
        dirs_cam = torch.stack(
            [(xs + 0.5 - cx * sx) / (fx * sx), -(ys + 0.5 - cy * sy) / (fy * sy), -torch.ones_like(xs, dtype=torch.float32)],
            -1,
        ).reshape(-1, 3)
        directions = F.normalize(dirs_cam @ c2w[:, :3].T, dim=-1)
        origins = c2w[:, 3].expand_as(directions)
        uv = torch.stack([(xs.reshape(-1) + 0.5) / width, (ys.reshape(-1) + 0.5) / height], -1)
        return origins, directions, uv

    @torch.no_grad()
    def composite(
        self,
        head_rgb: Float[Tensor, "pixels 3"],
        accumulation: Float[Tensor, "pixels 1"],
        uv: Float[Tensor, "pixels 2"],
        c2w: Float[Tensor, "3 4"],
    ) -> Float[Tensor, "pixels 3"]:
        """The head (premultiplied colour, opacity) over the image-space torso layer over the background plate, at
        normalized pixel positions `uv` of one frame with head pose `c2w` (as the model's own forward pass does)."""
        model = self.model
        c2w = c2w.to(self.device).float()
        pose = ((head_pose_features(c2w[None]) - model.pose_mean) / model.pose_std).expand(uv.shape[0], -1)
        with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
            torso_rgb, torso_alpha = model.torso(uv, pose)
        background = sample_image(model.background, uv)
        return composite_layers(head_rgb, accumulation, torso_rgb.float(), torso_alpha.float(), background)
