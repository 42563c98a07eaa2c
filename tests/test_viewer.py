"""The nerfstudio viewer: our controls are discovered on the model, and `ns-viewer` serves a jean model on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import small_pipeline_config
from render_helpers import train_tiny_model


def test_viewer_discovers_the_models_controls(synthetic_dataset):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    pipeline = small_pipeline_config(synthetic_dataset).pipeline.setup(device="cpu", test_mode="val")
    names = {element.name for _, element in parse_object(pipeline, ViewerElement, "Custom Elements")}
    assert {"Audio", "Audio from frame", "Expression", "Expression from frame"} <= names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ns_viewer_serves_a_trained_model_on_loopback(synthetic_dataset, tmp_path):
    config_path = train_tiny_model(synthetic_dataset, tmp_path)
    port = free_port()
    viewer = subprocess.Popen(
        [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(config_path),
         "--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 240
        page = None
        while time.time() < deadline and viewer.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(1)
        assert viewer.poll() is None, viewer.stdout.read()[-3000:] if viewer.stdout else "viewer exited"
        assert page is not None and "<html" in page.lower()
    finally:
        viewer.kill()
        viewer.wait(timeout=30)


def test_time_slider_renders_each_frame_with_its_own_audio_and_expression(synthetic_dataset):
    """The viewer's time slider only sets `times`: the frame's own codes must follow it, and a camera rendered that
    way equals one carrying that frame's codes explicitly (as jean-render's cameras do). jean-small's default config
    (transformer expression encoder), untrained: this checks plumbing, not quality."""
    import copy

    import torch
    from nerfstudio.cameras.cameras import Cameras

    from jean_nerfstudio import constants as C
    from jean_nerfstudio.jean_config import jean_small_method

    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = synthetic_dataset
    config.pipeline.datamanager.dataparser.data = synthetic_dataset
    torch.manual_seed(0)
    model = config.pipeline.setup(device="cpu", test_mode="val").model
    model.eval()
    last = model.num_frames - 1
    fx, fy, cx, cy = [float(v) for v in model.intrinsics]

    def camera(frame: int, metadata=None) -> Cameras:
        # The viewer's camera: a fixed pose, the slider's time, nothing else (4x smaller than the training frames).
        return Cameras(camera_to_worlds=model.clip_camera_to_worlds[3:4], fx=fx / 4, fy=fy / 4, cx=cx / 4, cy=cy / 4,
                       width=model.image_width // 4, height=model.image_height // 4,
                       times=torch.tensor([[frame / last]]), metadata=metadata)

    with torch.no_grad():
        renders = {}
        for frame in (2, last - 1):
            applied = model.viewer_controls.apply(camera(frame), model.audio, model.expression).metadata
            own = torch.tensor([frame])
            torch.testing.assert_close(applied[C.META_AUDIO_CODE], model.audio_codes_for_frames(own))
            torch.testing.assert_close(applied[C.META_EXPRESSION_CODE], model.expression_codes_for_frames(own))
            renders[frame] = model.get_outputs_for_camera(camera(frame))["rgb"]
            explicit = model.get_outputs_for_camera(camera(frame, {
                C.META_AUDIO_CODE: model.audio_codes_for_frames(own),
                C.META_EXPRESSION_CODE: model.expression_codes_for_frames(own),
                C.META_FRAME_INDEX: torch.tensor([[float(frame)]]),
            }))["rgb"]
            torch.testing.assert_close(renders[frame], explicit)
        assert (renders[2] - renders[last - 1]).abs().max() > 1e-4  # another frame: other codes, another picture
