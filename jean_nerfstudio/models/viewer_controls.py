"""Viewer controls of the JEAN model: drive the mouth from another frame's audio, mute it, swap or edit expressions.

The nerfstudio viewer shows every `ViewerElement` found on the model. The frame itself is the viewer's time slider
(the dataparser sets `times`). Controls are read once per rendered camera and turned into per-camera codes, which the
model copies onto each ray; at their defaults they change nothing, so evaluation renders are unaffected.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.viewer.viewer_elements import ViewerDropdown, ViewerSlider
from torch import Tensor, nn

from jean_nerfstudio import constants as C

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


class JeanViewerControls(nn.Module):
    """The model's viewer GUI elements and how they become codes. Holds no parameters."""

    def __init__(self, model) -> None:
        super().__init__()
        # A plain list, not an attribute: registering the model as a child would make the module tree cyclic, and the
        # viewer's element search skips names starting with "_".
        self._model = [model]
        last = max(model.num_frames - 1, 1)
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
        self.edit_names = list(model.expression_control_names)
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
    def apply(self, camera: Cameras, values: Optional[Dict[str, object]] = None) -> Cameras:
        """`camera` with per-camera audio/expression codes reflecting the controls (unchanged at defaults)."""
        values = self.read() if values is None else values
        if self.is_default(values):
            return camera
        model = self._model[0]
        device = model.device
        if camera.times is not None:
            frame = int(torch.round(camera.times.reshape(-1)[0] * (model.num_frames - 1)).clamp(0, model.num_frames - 1))
        else:
            frame = 0
        n = camera.shape[0] if len(camera.shape) else 1
        audio = self.audio_code(model, values, frame, device)
        expression = self.expression_code(model, values, frame, device)
        return with_metadata(
            camera,
            {
                C.META_FRAME_INDEX: torch.full((n, 1), float(frame), device=camera.camera_to_worlds.device),
                C.META_AUDIO_CODE: audio.expand(n, -1).to(camera.camera_to_worlds.device),
                C.META_EXPRESSION_CODE: expression.expand(n, -1).to(camera.camera_to_worlds.device),
            },
        )

    @staticmethod
    def audio_code(model, values: Dict[str, object], frame: int, device) -> Tensor:
        source = values["audio_source"]
        if source == AUDIO_MUTED:
            k = model.audio.smoothing_frames
            silence = model.silence_window[None].expand(2 * k + 1, -1, -1)
            return model.audio.codes(silence, torch.tensor([k], device=device))
        audio_frame = int(values["audio_frame"]) if source == AUDIO_OTHER else frame  # type: ignore[arg-type]
        audio_frame = min(max(audio_frame, 0), model.num_frames - 1)
        return model.audio_codes_for_frames(torch.tensor([audio_frame], device=device))

    @staticmethod
    def expression_code(model, values: Dict[str, object], frame: int, device) -> Tensor:
        source = values["expression_source"]
        inputs = model.expression_inputs
        target = frame
        if source == EXPR_OTHER:
            target = min(max(int(values["expression_frame"]), 0), model.num_frames - 1)  # type: ignore[arg-type]
        elif source == EXPR_NEUTRAL:
            inputs = inputs.median(dim=0, keepdim=True).values.expand_as(inputs)
        edits = {k: v for k, v in values["edits"].items() if abs(v) > 1e-6}  # type: ignore[union-attr]
        if edits and model.expression_editor is not None:
            inputs = model.expression_editor(inputs, edits)
        return model.expression.codes(inputs, torch.tensor([target], device=device))
