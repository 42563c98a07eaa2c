"""The viewer as a user sees it: `ns-viewer` on a trained jean-small run, driven in a real headless Chromium.

The test opens the page, waits for the first rendered image, finds JEAN's panel (audio source and frame, mute,
expression source and frame, the named expression edits, the training-camera button), moves controls the way a user
does (typing into the number boxes, picking from the drop-downs) and measures the picture from canvas screenshots:
muting or swapping the audio changes the mouth region, an expression edit changes the face outside it, the time slider
shows other frames, and the first picture after a change comes within a few seconds.

Shrunk for CPU test time, and only these: the clip is `jean-process`'s 128x128 synthetic talking face, training runs
`TRAIN_ITERATIONS` iterations, and the viewer's "Max res" is lowered from 512 to `MAX_RES` (one full render at 512 takes
tens of seconds on 2 cores; the low-resolution preview that nerfstudio shows first after every change is unaffected).
The model config is jean-small's own: transformer expression encoder, its grids, samples and chunk sizes.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest

INSTALL = "apt-get install -y chromium chromium-driver"
TRAIN_ITERATIONS = 120
"""Enough for the audio pathway to move the mouth visibly (muting changes the mouth by ~0.017 mean absolute at 120
iterations, by ~0.0002 at 30, when the 2D torso layer has learned the picture but the head barely hears audio)."""
MAX_RES = 128
FIRST_RENDER_AFTER_CHANGE_S = 10.0
"""A generous bound for CI under load; on a quiet 2-core machine the preview comes in about a second."""


def _browser_paths() -> Tuple[Optional[str], Optional[str]]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return browser, shutil.which("chromedriver")


def train_default_small(data: Path, out: Path, iterations: int) -> Path:
    """jean-small exactly as registered, trained `iterations` CPU iterations with nerfstudio's loop; config.yml."""
    from nerfstudio.scripts.train import train_loop

    from jean_nerfstudio.jean_config import jean_small_method

    assert jean_small_method is not None
    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.output_dir = out
    config.max_num_iterations = iterations
    config.steps_per_save = iterations
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config.get_base_dir() / "config.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ViewerPage:
    """The viewer page in Chromium, with the few gestures the test needs (viser's Mantine widgets)."""

    def __init__(self, driver) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.By = By
        self.canvas_shape: Tuple[int, int] = (0, 0)

    def text(self) -> str:
        return self.driver.find_element(self.By.TAG_NAME, "body").text

    def resolution(self) -> Optional[Tuple[int, int]]:
        for line in self.text().splitlines():
            if line.startswith("Resolution:") and "x" in line:
                width, height = line.split(":")[1].strip().removesuffix("px").split("x")
                return int(width), int(height)
        return None

    def canvas(self):
        canvases = self.driver.find_elements(self.By.TAG_NAME, "canvas")
        return max(canvases, key=lambda c: c.size["width"] * c.size["height"])

    def image(self) -> np.ndarray:
        """The 3D view (the rendered image is its background) as float RGB in [0, 1]: the canvas left of the control
        panel (the canvas spans the window; the view, and the rendered picture, end where the panel begins)."""
        from PIL import Image

        canvas = self.canvas()
        png = canvas.screenshot_as_png
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
        # The panel's buttons sit 10 px inside its left edge.
        panel = self.driver.find_element(self.By.XPATH, "//button[contains(normalize-space(), 'Train Cams')]")
        visible = int((panel.location["x"] - 10 - canvas.location["x"]) * image.shape[1] / canvas.size["width"])
        image = image[:, : max(visible, 1)]
        self.canvas_shape = image.shape[:2]
        return image

    def _row_input(self, label: str, css_class: str):
        By = self.By
        element = self.driver.find_element(By.XPATH, f"//label[normalize-space()='{label}']")
        row = element.find_element(By.XPATH, "./ancestor::div[contains(@class, 'mantine-Flex-root')][1]")
        return row.find_element(By.CSS_SELECTOR, f"input.{css_class}")

    def set_number(self, label: str, value: float) -> None:
        """Enter a value in a slider's number box and confirm it.

        The value is set whole, through the input's native setter and an input event (what React sees when a user
        types), rather than key by key: typing "128" into "Max res" passes through "1", and nerfstudio's viewer
        then computes a zero-pixel image and its render thread dies (KeyError 'depth' in nerfstudio 1.1.5).
        """
        box = self._row_input(label, "mantine-NumberInput-input")
        self.driver.execute_script(
            "const box = arguments[0];"
            "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, arguments[1]);"
            "box.dispatchEvent(new Event('input', {bubbles: true}));"
            "box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));"
            "box.blur();",
            box, str(value),
        )
        self.wait_for(lambda: float(box.get_attribute("value") or "nan") == float(value), 10, f"{label} = {value}")

    def choose(self, label: str, option: str) -> None:
        """Pick an option of a drop-down."""
        By = self.By
        box = self._row_input(label, "mantine-Select-input")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        box.click()  # a real click: the drop-down opens on the pointer events a user's click makes
        deadline = time.time() + 10
        while time.time() < deadline:
            for candidate in self.driver.find_elements(By.CSS_SELECTOR, "[role='option']"):
                if candidate.text.strip() == option:
                    # A click by script: a tooltip of the neighbouring control can cover the option for a moment.
                    self.driver.execute_script("arguments[0].click()", candidate)
                    self.wait_for(lambda: self._row_input(label, "mantine-Select-input").get_attribute("value") == option,
                                  10, f"{label} = {option}")
                    return
            time.sleep(0.1)
        raise AssertionError(f"no option '{option}' in the '{label}' drop-down")

    def click_button(self, text: str) -> None:
        button = self.driver.find_element(self.By.XPATH, f"//button[normalize-space()='{text}']")
        self.driver.execute_script("arguments[0].click()", button)

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def settled(self, previous, timeout: float = 180.0) -> Tuple[np.ndarray, float]:
        """Wait for a new picture at full (MAX_RES) resolution that stays put and differs from every picture in
        `previous` (one, a list, or None); returns it and the seconds until the first changed picture (the preview)
        appeared."""
        olds = [] if previous is None else list(previous) if isinstance(previous, (list, tuple)) else [previous]
        start = time.time()
        first_change = None
        deadline = start + timeout
        last = None
        while time.time() < deadline:
            current = self.image()
            changed = all(current.shape != old.shape or np.abs(current - old).max() > 0.02 for old in olds)
            if changed and first_change is None:
                first_change = time.time() - start
            res = self.resolution()
            if first_change is not None and res is not None and max(res) == MAX_RES:
                if last is not None and last.shape == current.shape and np.abs(current - last).max() < 1e-6:
                    return current, first_change
                last = current
                time.sleep(1.0)
                continue
            last = None
            time.sleep(0.1)
        raise AssertionError(f"no settled picture within {timeout:.0f} s (resolution {self.resolution()})")


def region_boxes(clip: Path, canvas_shape: Tuple[int, int]) -> Dict[str, Tuple[slice, slice]]:
    """The mouth and the upper face of frame 0 (from jean-process's labels), in canvas pixels.

    The viewer starts at (and the test re-clicks) frame 0's training camera with its vertical field of view, and the
    rendered image fills the canvas: a training pixel maps through the two focal lengths and the canvas aspect.
    """
    import json

    from PIL import Image

    from jean_nerfstudio import constants as C

    meta = json.loads((clip / "transforms.json").read_text())
    labels = np.asarray(Image.open(clip / meta["frames"][0]["segmentation_path"]))
    fx, fy, cx, cy, h = meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["h"]
    height, width = canvas_shape
    aspect = width / height

    def to_canvas(px: float, py: float) -> Tuple[int, int]:
        x = (0.5 + (px - cx) / h * (fy / fx) / aspect) * width
        y = (0.5 + (py - cy) / h) * height
        return int(round(x)), int(round(y))

    ys, xs = np.nonzero(labels == C.LABEL_MOUTH)
    assert len(ys), "the processed clip has no mouth label in frame 0"
    x0, y0 = to_canvas(xs.min() - 1, ys.min() - 1)
    x1, y1 = to_canvas(xs.max() + 2, ys.max() + 2)
    head_ys, head_xs = np.nonzero(labels == C.LABEL_HEAD)
    hx0, hy0 = to_canvas(head_xs.min(), head_ys.min())
    # The upper face: the head above the mouth box, leaving a margin of a mouth height.
    upper_bottom = to_canvas(0, ys.min() - (ys.max() - ys.min()))[1]
    hx1, hy1 = to_canvas(head_xs.max() + 2, max(head_ys.max(), ys.max()) + 2)
    # "Away from the head": its box grown by a fifth of its size on each side, so that the head's soft edge (hair,
    # chin, neck, where the NeRF's density does not stop at the label) does not count as outside it.
    mx, my = (hx1 - hx0) // 5, (hy1 - hy0) // 5
    return {
        "head": (slice(max(hy0 - my, 0), hy1 + my), slice(max(hx0 - mx, 0), hx1 + mx)),
        "mouth": (slice(max(y0, 0), y1), slice(max(x0, 0), x1)),
        "upper_face": (slice(max(hy0, 0), max(upper_bottom, hy0 + 1)), slice(max(hx0, 0), to_canvas(head_xs.max(), 0)[0])),
    }


def change_in(a: np.ndarray, b: np.ndarray, box: Tuple[slice, slice]) -> float:
    """Mean absolute difference of two screenshots inside a box."""
    return float(np.abs(a[box] - b[box]).mean())


def change_outside(a: np.ndarray, b: np.ndarray, box: Tuple[slice, slice]) -> float:
    mask = np.ones(a.shape[:2], dtype=bool)
    mask[box] = False
    return float(np.abs(a - b)[mask].mean())


@pytest.fixture(scope="module")
def chromium():
    browser, driver = _browser_paths()
    if browser is None or driver is None:
        pytest.skip(f"needs Chromium and its WebDriver: {INSTALL}")
    pytest.importorskip("selenium", reason="needs selenium: pip install -e '.[dev]'")
    return browser, driver


@pytest.mark.slow
def test_jean_panel_in_a_real_browser(chromium, tiny_dataset, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started = time.time()
    config_path = train_default_small(tiny_dataset, tmp_path_factory.mktemp("viewer_run"), TRAIN_ITERATIONS)
    trained = time.time()
    port = free_port()
    log_path = tmp_path_factory.mktemp("viewer_log") / "ns-viewer.log"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log_path, "w") as log:
        viewer = subprocess.Popen(
            [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(config_path),
             "--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    driver = None
    try:
        deadline = time.time() + 240
        while True:
            assert viewer.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "ns-viewer did not serve its page within 240 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)

        options = webdriver.ChromeOptions()
        options.binary_location = chromium[0]
        # SwiftShader gives headless Chromium WebGL without a GPU (the viewer draws into a WebGL canvas).
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800",
                    "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-extensions"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(chromium[1]))
        driver.get(f"http://127.0.0.1:{port}/")
        page = ViewerPage(driver)

        # The first rendered image, then JEAN's panel.
        page.wait_for(page.resolution, 120, "the first rendered image")
        text = page.wait_for(lambda: "Training camera view" in page.text() and page.text(), 60, "JEAN's panel")
        for name in ("Audio", "Audio from frame", "Expression", "Expression from frame", "Smile", "Brow raise", "Blink",
                     "Frown", "Squint", "Eye wide", "Training camera view"):
            assert name in text.splitlines(), f"'{name}' is not in the viewer's panel"
        page.click_button("Hide Train Cams")  # the training frustums would be drawn over the picture
        page.set_number("Max res", MAX_RES)
        page.click_button("Training camera view")
        baseline, _ = page.settled(None)
        assert baseline.std() > 0.02, "the rendered image is blank"
        boxes = region_boxes(tiny_dataset, page.canvas_shape)

        # Audio: muted, then another frame's audio.
        page.choose("Audio", "muted")
        muted, latency_mute = page.settled(baseline)
        page.choose("Audio", "another frame")
        page.set_number("Audio from frame", 50)
        other_audio, latency_audio = page.settled([muted, baseline])
        # A named expression edit, with the frame's own audio again (so the picture differs from the first one by the
        # edit alone).
        page.choose("Audio", "this frame")
        page.set_number("Brow raise", 1)
        brows, latency_edit = page.settled([other_audio, baseline])

        # The time slider: the last frame, with its own audio and expression.
        page.set_number("Brow raise", 0)
        page.set_number("Time", 1)
        last_frame, latency_time = page.settled([brows, baseline])

        report = {
            "mouth change, muted": change_in(baseline, muted, boxes["mouth"]),
            "upper-face change, muted": change_in(baseline, muted, boxes["upper_face"]),
            "change away from the head, muted": change_outside(baseline, muted, boxes["head"]),
            "mouth change, other frame's audio": change_in(baseline, other_audio, boxes["mouth"]),
            "upper-face change, brow raise": change_in(baseline, brows, boxes["upper_face"]),
            "change outside the mouth, brow raise": change_outside(baseline, brows, boxes["mouth"]),
            "change, last frame": float(np.abs(baseline - last_frame).mean()),
            "first picture after a change, s": max(latency_mute, latency_audio, latency_edit, latency_time),
            "training s": trained - started,
            "total s": time.time() - started,
        }
        print("viewer in the browser:", {k: round(v, 4) for k, v in report.items()})
        screenshot = os.environ.get("JEAN_VIEWER_SCREENSHOT")
        if screenshot:  # docs/viewer_panel.png comes from here; the pointer leaves the panel so no tooltip covers it
            from selenium.webdriver.common.action_chains import ActionChains

            ActionChains(driver).move_to_element_with_offset(page.canvas(), 0, 0).perform()
            time.sleep(1.0)
            driver.save_screenshot(screenshot)

        # Changing the audio changes the mouth, and acts through the head only (the torso and background layers never
        # see audio). Whether it moves the mouth MORE than the upper face is the model's training state, not the
        # viewer's wiring: a 120-step head does not localize audio reliably (it did for one seed, not for the next;
        # docs/benchmarks.md "Why the mouth does not follow new audio" measures the same on a real clip), so the
        # upper-face change is reported, not asserted.
        assert report["mouth change, muted"] > 0.005
        assert report["mouth change, muted"] > 2 * report["change away from the head, muted"]
        assert report["mouth change, other frame's audio"] > 0.002
        # The expression edit changes the face outside the mouth.
        assert report["upper-face change, brow raise"] > 0.003
        assert report["change outside the mouth, brow raise"] > 0.001
        assert report["change, last frame"] > 0.002
        # Responsive: every change showed a new picture within seconds on the CPU.
        assert report["first picture after a change, s"] < FIRST_RENDER_AFTER_CHANGE_S
    finally:
        if driver is not None:
            driver.quit()
        viewer.kill()
        viewer.wait(timeout=30)
