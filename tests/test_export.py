"""`jean-export`: a trained head travels. Train a tiny run, export it, move the export, delete the dataset and the run,
then render new audio, evaluate it and open it the way `ns-viewer` does, from the export alone; an incomplete export,
or training on its dataset, is one line with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from render_helpers import speech_like_wav, train_tiny_model

from jean_nerfstudio import constants as C
from jean_nerfstudio.export import ExportConfig, main
from jean_nerfstudio.render.exported import CONFIG_FILE, DATASET_DIR, MANIFEST_FILE


@pytest.fixture(scope="module")
def moved_export(synthetic_dataset, tmp_path_factory) -> dict:
    """An export whose run and dataset are gone: {"config": moved config.yml, "manifest": ..., "root": folder}."""
    work = tmp_path_factory.mktemp("export_work")
    clip = work / "clip"
    shutil.copytree(synthetic_dataset, clip)  # its own copy: this test deletes it
    config = train_tiny_model(clip, work / "outputs")
    _, manifest = main(ExportConfig(load_config=config, output=work / "exported" / "head"))
    elsewhere = tmp_path_factory.mktemp("another_machine") / "heads" / "alice"
    shutil.move(str(work / "exported" / "head"), str(elsewhere))
    shutil.rmtree(work)  # the dataset, the run and its checkpoints
    assert not clip.exists() and not config.exists()
    return {"config": elsewhere / CONFIG_FILE, "manifest": manifest, "root": elsewhere}


def test_the_export_holds_what_driving_needs_and_no_frames(moved_export) -> None:
    root, manifest = moved_export["root"], moved_export["manifest"]
    files = set(manifest["files"])
    assert {CONFIG_FILE, "encoders/audio_encoder.ckpt", "encoders/expression_encoder.ckpt"} <= files
    assert {f"{DATASET_DIR}/{name}" for name in (C.METADATA_FILE, C.TRANSFORMS_FILE, C.BACKGROUND_FILE, C.AUDIO_FILE)} <= files
    assert {f"{DATASET_DIR}/{C.FEATURES_DIR}/{name}" for name in C.FEATURE_FILES.values()} <= files
    assert not (root / DATASET_DIR / C.IMAGES_DIR).exists() and not (root / DATASET_DIR / C.SEGMENTATION_DIR).exists()
    assert manifest["omitted"]["num_files"] == 24 and manifest["omitted"]["bytes"] > 0  # 12 frames + 12 label maps
    assert json.loads((root / DATASET_DIR / C.METADATA_FILE).read_text())[C.FRAMES_OMITTED_KEY]["folders"] == [
        C.IMAGES_DIR, C.SEGMENTATION_DIR]
    checkpoints = [name for name in files if name.endswith(".ckpt") and "nerfstudio_models" in name]
    assert len(checkpoints) == 1
    import torch

    state = torch.load(root / checkpoints[0], map_location="cpu", weights_only=False)
    assert set(state) == {"step", "pipeline"}  # weights only, no optimizer state
    assert manifest["bytes"] == sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    text = (root / CONFIG_FILE).read_text()
    assert str(moved_export["manifest"]["source"]["dataset"]) not in text  # no path of the training machine is read


def test_render_and_eval_new_audio_from_the_moved_export(moved_export, tmp_path, monkeypatch) -> None:
    from jean_nerfstudio.eval import EvalConfig
    from jean_nerfstudio.eval import main as eval_main
    from jean_nerfstudio.render.cli import entrypoint as render
    from jean_nerfstudio.video_io import probe

    voice = speech_like_wav(tmp_path / "new_voice.wav", 0.6, sample_rate=22050, seed=5)
    monkeypatch.chdir(tmp_path)  # anywhere: the export's paths resolve against its own folder
    video = tmp_path / "alice.mp4"
    render(["--load-config", str(moved_export["config"]), "--audio", str(voice), "--output", str(video)])
    assert probe(video).frame_count == 15
    report = eval_main(EvalConfig(load_config=moved_export["config"], new_audio=voice, face_metrics=False,
                                  output=tmp_path / "metrics.json"))
    assert report["new_audio"]["num_frames"] == 15 and report["new_audio"]["render_fps"] > 0
    assert report["heldout"]["num_frames"] == 0 and "ships no frames" in report["reasons"]["heldout"]


def test_ns_viewer_loads_the_export_from_its_folder(moved_export, monkeypatch) -> None:
    """What `cd EXPORT && ns-viewer --load-config config.yml` does before serving: nerfstudio's own eval_setup in
    'test' mode (datasets set up), and a training camera's image for its frustum (the background plate)."""
    from nerfstudio.utils.eval_utils import eval_setup

    monkeypatch.chdir(moved_export["root"])
    _, pipeline, checkpoint, _ = eval_setup(Path(CONFIG_FILE), test_mode="test")
    assert Path(checkpoint).resolve().is_relative_to(moved_export["root"].resolve())
    dataset = pipeline.datamanager.train_dataset
    image = dataset[0]["image"]
    assert image.shape[-1] == 3 and len(dataset) > 0


def test_training_on_the_exported_dataset_is_refused_in_one_line(moved_export, capsys) -> None:
    from conftest import small_pipeline_config

    data = moved_export["root"] / DATASET_DIR
    with pytest.raises(SystemExit) as exit_:
        small_pipeline_config(data).pipeline.setup(device="cpu", test_mode="val")  # what ns-train sets up
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "ships no frames" in lines[0] and "training" in lines[0], lines


@pytest.mark.parametrize("damage", ["feature missing", "checkpoint cut short", "manifest missing"])
def test_an_incomplete_export_is_one_line(damage, moved_export, tmp_path, capsys) -> None:
    from jean_nerfstudio.render.cli import entrypoint as render

    broken = tmp_path / "broken"
    shutil.copytree(moved_export["root"], broken)
    manifest = moved_export["manifest"]
    if damage == "feature missing":
        (broken / DATASET_DIR / C.FEATURES_DIR / C.FEATURE_FILES["mel_windows"]).unlink()
        expected = "the export is incomplete"
    elif damage == "checkpoint cut short":
        ckpt = next(broken / name for name in manifest["files"] if "nerfstudio_models" in name)
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
        expected = "the export is incomplete"
    else:  # then it is read as a run whose dataset path (relative) is not there
        (broken / MANIFEST_FILE).unlink()
        expected = "no such dataset folder"
    voice = speech_like_wav(tmp_path / "v.wav", 0.3, sample_rate=16000, seed=2)
    with pytest.raises(SystemExit) as exit_:
        render(["--load-config", str(broken / CONFIG_FILE), "--audio", str(voice), "--output", str(tmp_path / "o.mp4")])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jean-render: error:") and expected in lines[0], lines
    assert not (tmp_path / "o.mp4").exists()


def test_export_refuses_to_overwrite_what_is_not_an_export(moved_export, tmp_path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    with pytest.raises(SystemExit) as exit_:
        main(ExportConfig(load_config=moved_export["config"], output=mine, force=True))
    assert exit_.value.code == 2 and (mine / "notes.txt").read_text() == "keep\n"
    assert "is not a jean export" in capsys.readouterr().err
    # An export of the export (its dataset is already slim) works, and --force replaces it.
    again = tmp_path / "again"
    main(ExportConfig(load_config=moved_export["config"], output=again))
    output, manifest = main(ExportConfig(load_config=moved_export["config"], output=again, force=True))
    assert output == again and manifest["omitted"] == moved_export["manifest"]["omitted"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
