"""The pinned stack installs together: nerfstudio and MediaPipe in one environment, one cv2, plugin registration."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys


def test_mediapipe_and_nerfstudio_import_together_with_one_cv2():
    code = (
        "import nerfstudio, mediapipe, cv2, numpy, face_alignment;"
        "from mediapipe.tasks.python import vision;"
        "import numpy as np; cv2.resize(np.zeros((4, 4, 3), np.uint8), (2, 2));"
        "print(numpy.__version__, cv2.__file__)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0].startswith("1.")  # nerfstudio's compiled deps need numpy < 2
    providers = [d for d in ("opencv-python", "opencv-contrib-python", "opencv-python-headless") if _installed(d)]
    assert providers == ["opencv-python-headless"], f"cv2 must have exactly one provider, found {providers}"


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def test_registry_finds_method_and_dataparser():
    from nerfstudio.plugins.registry import discover_methods
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    methods, descriptions = discover_methods()
    assert {"jean", "jean-small"} <= set(methods)
    assert "JEAN" in descriptions["jean"]
    dataparsers, _ = discover_dataparsers()
    assert "jean-data" in dataparsers


def test_console_scripts_are_declared():
    scripts = {ep.name for ep in md.entry_points(group="console_scripts") if ep.value.startswith("jean_nerfstudio")}
    assert {"jean-process", "jean-train-audio", "jean-render", "jean-eval"} <= scripts


def test_plugin_entry_point_import_is_light():
    """Plugin discovery imports this for every ns-* command: it may load nothing heavy beyond nerfstudio itself."""
    code = (
        "import sys; import nerfstudio.engine.trainer, nerfstudio.pipelines.base_pipeline;"
        "before = set(sys.modules);"
        "import jean_nerfstudio.jean_config, jean_nerfstudio.data.dataparser_spec;"
        "added = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(added & {'mediapipe', 'transformers', 'face_alignment', 'torchaudio', 'skimage', 'sklearn'}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
