"""Viewer controls of the JEAN model: drive the mouth from another frame's audio, mute it, swap or edit expressions.

The nerfstudio viewer shows every `ViewerElement` found on the model. The frame itself is the viewer's time slider
(the dataparser sets `times`): scrubbing it shows each frame with its own audio and expression. Controls are read once
per rendered camera and turned into per-camera codes, which the model copies onto each ray; at their defaults the codes
are the frame's own, so evaluation renders are unaffected.

The controls hold GUI state only: the model hands its two sources to `apply` for each camera, and the training-camera
view gets the clip's cameras as data when it is made, so nothing here refers back to the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerControl, ViewerDropdown, ViewerSlider
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.models.conditioning import AudioConditioner, ExpressionConditioner

AUDIO_OWN, AUDIO_OTHER, AUDIO_MUTED = "this frame", "another frame", "muted"
EXPR_OWN, EXPR_OTHER, EXPR_NEUTRAL = "this frame", "another frame", "neutral"


def with_metadata(camera: Cameras, extra: Dict[str, Tensor]) -> Cameras:
    """A copy of `camera` whose metadata also holds `extra` (each value [num_cameras, D])."""
    metadata = dict(camera.metadata or {})
    metadata.update(extra)
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds,
        fx=camera.fx,
        fy=camera.fy,
        cx=camera.cx,
        cy=camera.cy,
        width=camera.width,
        height=camera.height,
        distortion_params=camera.distortion_params,
        camera_type=camera.camera_type,
        times=camera.times,
        metadata=metadata,
    )


@dataclass(frozen=True)
class TrainingView:
    """What putting the viewer's camera at a training camera needs (fixed for a trained model; kept on the CPU)."""

    camera_to_worlds: Tensor
    """float64 [N, 3, 4]: the clip's cameras, OpenGL axes (x right, y up, z backwards)."""
    look_at: Tensor
    """float64 [3]: the head box's centre (orbit controls turn about it)."""
    fy: float
    """Vertical focal length in training pixels."""
    image_height: int
    """Training image height in pixels."""

    @property
    def num_frames(self) -> int:
        return int(self.camera_to_worlds.shape[0])


class JeanViewerControls(nn.Module):
    """The model's viewer GUI elements and how they become codes. Holds no parameters and no model.

    Args:
        num_frames: frames of the training clip (range of the frame sliders).
        edit_names: the expression source's named edits (one slider each).
        training_view: the clip's cameras, for the "Training camera view" button.
    """

    def __init__(self, num_frames: int, edit_names: Sequence[str], training_view: TrainingView) -> None:
        super().__init__()
        self.num_frames = int(num_frames)
        last = max(self.num_frames - 1, 1)
        self.audio_source = ViewerDropdown(
            "Audio", AUDIO_OWN, [AUDIO_OWN, AUDIO_OTHER, AUDIO_MUTED],
            hint="Drive the mouth with this frame's audio, another frame's, or silence (shows what audio controls).",
        )
        self.audio_frame = ViewerSlider("Audio from frame", 0, 0, last, step=1, hint="Frame whose audio drives the mouth.")
        self.expression_source = ViewerDropdown(
            "Expression", EXPR_OWN, [EXPR_OWN, EXPR_OTHER, EXPR_NEUTRAL],
            hint="This frame's expression, another frame's, or the clip's neutral (median) expression.",
        )
        self.expression_frame = ViewerSlider("Expression from frame", 0, 0, last, step=1, hint="Frame whose expression is shown.")
        self.camera_view = TrainingCameraView(training_view)
        self.training_camera = ViewerButton("Training camera view", cb_hook=lambda _: self.camera_view.move_all())
        self.edit_names: List[str] = list(edit_names)
        for name in self.edit_names:
            setattr(self, f"edit_{name}", ViewerSlider(name.replace("_", " ").capitalize(), 0.0, -1.0, 1.0, step=0.05,
                                                       hint=f"Edit the expression input: {name}."))

    def read(self) -> Dict[str, object]:
        """Read every control once (a render must not mix values from before and after a GUI change)."""
        return {
            "audio_source": self.audio_source.value,
            "audio_frame": int(self.audio_frame.value),
            "expression_source": self.expression_source.value,
            "expression_frame": int(self.expression_frame.value),
            "edits": {name: float(getattr(self, f"edit_{name}").value) for name in self.edit_names},
        }

    @staticmethod
    def is_default(values: Dict[str, object]) -> bool:
        edits = values["edits"]
        assert isinstance(edits, dict)
        return values["audio_source"] == AUDIO_OWN and values["expression_source"] == EXPR_OWN and not any(
            abs(v) > 1e-6 for v in edits.values()
        )

    @torch.no_grad()
    def apply(
        self,
        camera: Cameras,
        audio: AudioConditioner,
        expression: ExpressionConditioner,
        values: Optional[Dict[str, object]] = None,
    ) -> Cameras:
        """`camera` with its frame's audio and expression codes in its metadata, reflecting the controls.

        The codes are constant over a frame, so they are computed here once per rendered camera: left to the model,
        every chunk of rays would re-encode them (for the transformer expression encoder, a pass over its window per
        chunk). Codes a renderer already put on the camera are kept while the controls are at their defaults.

        Args:
            camera: the camera to render.
            audio, expression: the model's two sources.
            values: control values (default: read from the GUI now).
        """
        values = self.read() if values is None else values
        metadata = camera.metadata or {}
        default = self.is_default(values)
        if default and C.META_AUDIO_CODE in metadata and C.META_EXPRESSION_CODE in metadata:
            return camera
        frame = self.camera_frame(camera)
        n = camera.shape[0] if len(camera.shape) else 1
        to_camera = camera.camera_to_worlds.device
        if default and C.META_AUDIO_CODE in metadata:
            audio_code = metadata[C.META_AUDIO_CODE]
        else:
            audio_code = self.audio_code(audio, values, frame).expand(n, -1).to(to_camera)
        if default and C.META_EXPRESSION_CODE in metadata:
            expression_code = metadata[C.META_EXPRESSION_CODE]
        else:
            expression_code = self.expression_code(expression, values, frame).expand(n, -1).to(to_camera)
        extra = {C.META_AUDIO_CODE: audio_code, C.META_EXPRESSION_CODE: expression_code}
        if C.META_FRAME_INDEX not in metadata:
            extra[C.META_FRAME_INDEX] = torch.full((n, 1), float(frame), device=to_camera)
        return with_metadata(camera, extra)

    def camera_frame(self, camera: Cameras) -> int:
        """The training-clip frame a camera shows: its frame metadata (renderers), else its time (the viewer's time
        slider), else frame 0; the same rule as `JeanModel.ray_frame_indices`."""
        metadata = camera.metadata or {}
        if C.META_FRAME_INDEX in metadata:
            value = metadata[C.META_FRAME_INDEX].reshape(-1)[0]
            return int(torch.round(value).clamp(0, self.num_frames - 1))
        if camera.times is not None:
            return int(C.time_to_frame(camera.times.reshape(-1)[0], self.num_frames))
        return 0

    def _clip_frame(self, frame: int) -> int:
        return min(max(int(frame), 0), self.num_frames - 1)

    def audio_code(self, audio: AudioConditioner, values: Dict[str, object], frame: int) -> Tensor:
        source = values["audio_source"]
        if source == AUDIO_MUTED:
            return audio.silence_code()
        audio_frame = self._clip_frame(values["audio_frame"]) if source == AUDIO_OTHER else frame  # type: ignore[arg-type]
        return audio.frame_codes(torch.tensor([audio_frame], device=audio.windows.device))

    def expression_code(self, expression: ExpressionConditioner, values: Dict[str, object], frame: int) -> Tensor:
        source = values["expression_source"]
        inputs = expression.inputs
        target = frame
        if source == EXPR_OTHER:
            target = self._clip_frame(values["expression_frame"])  # type: ignore[arg-type]
        elif source == EXPR_NEUTRAL:
            inputs = expression.neutral_inputs(inputs.shape[0])
        inputs = expression.edited(inputs, values["edits"])  # type: ignore[arg-type]
        return expression.codes(inputs, torch.tensor([target], device=inputs.device))


class TrainingCameraView(ViewerControl):
    """Puts viewer cameras at the training camera of the frame on the time slider (and every new browser there).

    The torso and the background are image-space layers looked up where a ray lands in its frame's training camera,
    so the composited picture is right from that camera and only approximate far from it. Starting there (rather
    than at viser's default pose, looking at the box from outside) shows the talking head as it was filmed; orbiting
    from there is the user's choice. The look-at point is the head box's centre, so orbit controls turn about it.
    """

    def __init__(self, view: TrainingView) -> None:
        self.view = view

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self.move)

    def frame(self) -> int:
        """The frame on the viewer's time slider."""
        time = float(getattr(self.viewer.control_panel, "time", 0.0)) if hasattr(self, "viewer") else 0.0
        return int(C.time_to_frame(torch.tensor(min(max(time, 0.0), 1.0)), self.view.num_frames))

    def move_all(self) -> None:
        if hasattr(self, "viser_server"):
            for client in self.viser_server.get_clients().values():
                self.move(client)

    @torch.no_grad()
    def move(self, client) -> None:
        """Set one client's camera (pose and vertical field of view) to the training camera of the current frame."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as scale

        c2w = self.view.camera_to_worlds[self.frame()]  # OpenGL axes: x right, y up, z backwards
        position = c2w[:, 3] * scale
        forward, up = -c2w[:, 2], c2w[:, 1]
        centre = self.view.look_at * scale
        distance = max(float((centre - position) @ forward), 1e-3)
        with client.atomic():
            client.camera.fov = 2.0 * math.atan(self.view.image_height / 2.0 / self.view.fy)
            client.camera.up_direction = up.numpy()
            client.camera.position = position.numpy()
            client.camera.look_at = (position + forward * distance).numpy()
