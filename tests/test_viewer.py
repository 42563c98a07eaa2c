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
