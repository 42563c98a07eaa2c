"""Robustness matrix, the commands that read datasets: `ns-train jean-small --data DIR` and `jean-train-audio DIRS`.

What users pass by mistake or by accident: the video itself instead of its dataset, an empty or text file, a folder
that is not a dataset, a run jean-process did not finish, a dataset of an older contract version, and a copy cut
short (a frame missing, a frame or a feature file truncated). Each must end in one line naming the path, the cause and
the fix, exit status 2, no traceback and no checkpoint. Datasets made from awkward videos (variable frame rate, 5.1
audio, unicode paths) must train.

ns-train runs in this process through nerfstudio's own console entry point (`nerfstudio.scripts.train.entrypoint`:
the same argument parsing, config saving, trainer and dataparser as the `ns-train` script, without paying its 15 s
start-up per case); one case also runs the `ns-train` script itself in a subprocess.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.encoder import AudioEncoderConfig, MouthEncoderConfig, SyncModelConfig
from jean_nerfstudio.audio.train import AudioTrainConfig
from jean_nerfstudio.audio.train_cli import main as train_audio_main
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.process.pipeline import process

from robustness_media import media

BIN = Path(sys.executable).parent
NS_TRAIN_SMALL = [
    "--vis", "tensorboard", "--max-num-iterations", "2", "--steps-per-save", "1",
    "--pipeline.model.num-levels", "4", "--pipeline.model.log2-hashmap-size", "10",
    "--pipeline.model.max-resolution", "64", "--pipeline.model.num-proposal-samples-per-ray", "16",
    "--pipeline.model.num-nerf-samples-per-ray", "8", "--pipeline.model.proposal-levels", "2",
    "--pipeline.model.proposal-max-resolution", "32", "--pipeline.model.torso-levels", "2",
    "--pipeline.model.torso-max-resolution", "32", "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.datamanager.eval-num-rays-per-batch", "256", "--pipeline.datamanager.frames-per-batch", "4",
    "--pipeline.datamanager.load-threads", "1", "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000",
    "--steps-per-eval-all-images", "100000",
]  # fmt: skip
"""jean-small shrunk for a CPU test, as command-line flags: the conftest's TINY_MODEL and TINY_BATCHES sizes, every
component a default (expression encoder, grid backend)."""
SMALL_SYNC = SyncModelConfig(audio=AudioEncoderConfig(width=32, output_dim=16, embed_dim=16), mouth=MouthEncoderConfig(hidden=32))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cut(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.fixture(scope="module")
def bad_datasets(tiny_clip: Path, tiny_dataset: Path, tmp_path_factory) -> dict:
    """Every wrong thing to pass as a dataset, made from real jean-process outputs."""
    root = tmp_path_factory.mktemp("bad datasets")
    cases = {"the video itself": tiny_clip, "missing folder": root / "no such folder"}
    cases["empty file"] = root / "empty.mp4"
    cases["empty file"].write_bytes(b"")
    cases["text file"] = root / "notes.mp4"
    cases["text file"].write_text("not a dataset\n")
    cases["folder of unrelated files"] = root / "my stuff"
    cases["folder of unrelated files"].mkdir()
    (cases["folder of unrelated files"] / "holiday.jpg").write_bytes(b"x")
    # A run jean-process could not finish (most frames without a face): a real half-made dataset.
    unfinished = root / "unfinished"
    with pytest.raises(ProcessError):
        process(ProcessConfig(video=media("most_no_face", root / "media").path, output=unfinished, image_size=96))
    cases["unfinished (jean-process failed)"] = unfinished
    older = _copy(tiny_dataset, root / "older")
    meta = json.loads((older / C.METADATA_FILE).read_text())
    meta["contract_version"] = 0
    (older / C.METADATA_FILE).write_text(json.dumps(meta))
    cases["older contract version"] = older
    no_frame = _copy(tiny_dataset, root / "frame missing")
    (no_frame / C.IMAGES_DIR / "000007.jpg").unlink()
    cases["copy with a frame missing"] = no_frame
    cut_frame = _copy(tiny_dataset, root / "frame cut")
    _cut(cut_frame / C.IMAGES_DIR / "000007.jpg")
    cases["copy with a frame cut short"] = cut_frame
    cut_labels = _copy(tiny_dataset, root / "labels cut")
    _cut(cut_labels / C.SEGMENTATION_DIR / "000003.png")
    cases["copy with a label map cut short"] = cut_labels
    cut_feature = _copy(tiny_dataset, root / "feature cut")
    _cut(cut_feature / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_canonical"], keep=0.3)
    cases["copy with a feature file cut short"] = cut_feature
    return cases


EXPECTED = {
    # case: (cause, fix), as the one line says them
    "the video itself": ("is a file, not a dataset folder", "process it first with `jean-process"),
    "missing folder": ("no such dataset folder", "create it with `jean-process VIDEO --output"),
    "empty file": ("is a file, not a dataset folder", "process it first with `jean-process"),
    "text file": ("is a file, not a dataset folder", "process it first with `jean-process"),
    "folder of unrelated files": ("not a jean dataset (jean.json missing)", "create it with `jean-process"),
    "unfinished (jean-process failed)": ("dataset is unfinished", "resume it with `jean-process VIDEO --output"),
    "older contract version": ("dataset contract version 0", "re-process the video with `jean-process"),
    "copy with a frame missing": ("missing or cut short (images/000007.jpg)", "copy the dataset again"),
    "copy with a frame cut short": ("missing or cut short (images/000007.jpg)", "copy the dataset again"),
    "copy with a label map cut short": ("missing or cut short (segmentation/000003.png)", "copy the dataset again"),
    "copy with a feature file cut short": ("unreadable feature 'landmarks_canonical'", "copy the dataset again"),
}


def _one_error_line(text: str, prefix: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.lower().startswith(prefix)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def _ns_train(data: Path, workdir: Path, monkeypatch, capsys) -> tuple[int, str]:
    from nerfstudio.scripts import train

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["ns-train", "jean-small", "--data", str(data), *NS_TRAIN_SMALL])
    with pytest.raises(SystemExit) as exit_:
        train.entrypoint()
    captured = capsys.readouterr()
    return exit_.value.code, captured.out + captured.err


@pytest.mark.parametrize("case", list(EXPECTED))
def test_ns_train_refuses_bad_data_in_one_line(case, bad_datasets, tmp_path, monkeypatch, capsys) -> None:
    data = bad_datasets[case]
    status, text = _ns_train(data, tmp_path, monkeypatch, capsys)
    assert status == 2
    line = _one_error_line(text, "ns-train: error:")
    cause, fix = EXPECTED[case]
    assert str(data) in line and cause in line and fix in line, line
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained, no checkpoint


def test_ns_train_console_script_refuses_an_older_dataset(bad_datasets, tmp_path) -> None:
    data = bad_datasets["older contract version"]
    done = subprocess.run([BIN / "ns-train", "jean-small", "--data", data, *NS_TRAIN_SMALL], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 2
    line = _one_error_line(done.stdout + done.stderr, "ns-train: error:")
    assert str(data) in line and "contract version 0" in line and "jean-process" in line
    assert not list(tmp_path.rglob("*.ckpt"))


AUDIO_CASES = [c for c in EXPECTED if "frame" not in c and "label map" not in c]  # it reads no images or label maps


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_jean_train_audio_refuses_bad_data_in_one_line(case, bad_datasets, tiny_dataset, tmp_path) -> None:
    data = bad_datasets[case]
    output = tmp_path / "encoder.ckpt"
    buffer = io.StringIO()
    # The bad dataset among good ones: the line must name the bad one.
    config = AudioTrainConfig(datasets=[tiny_dataset, data], output=output, max_steps=2, batch_size=8, model=SMALL_SYNC)
    status = train_audio_main(config, console=Console(file=buffer, width=100, soft_wrap=True))
    text = buffer.getvalue()
    assert status == 2
    line = _one_error_line(text, "jean-train-audio: error:")
    cause, fix = EXPECTED[case]
    if case == "copy with a feature file cut short":
        assert str(data) in line and cause in line and fix in line, line
    else:
        assert str(data) in line and cause in line, line
    assert not output.exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def awkward_datasets(tmp_path_factory) -> dict:
    """Datasets jean-process made from a variable-frame-rate clip and a 5.1 48 kHz one, in unicode folders."""
    root = tmp_path_factory.mktemp("datasets ü")
    made = {}
    for case in ("vfr", "audio_5_1"):
        out = root / f"données {case} ✓"
        process(ProcessConfig(video=media(case, root / "media").path, output=out, image_size=96))
        made[case] = out
    return made


def test_jean_train_audio_trains_on_awkward_datasets(awkward_datasets, tmp_path) -> None:
    """Both datasets train together; the checkpoint lands in a folder of someone else's files, which stay."""
    from jean_nerfstudio.audio.checkpoint import load_audio_encoder

    folder = tmp_path / "mes modèles"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep\n")
    output = folder / "encodeur ✓.ckpt"
    buffer = io.StringIO()
    config = AudioTrainConfig(datasets=list(awkward_datasets.values()), output=output, max_steps=3, batch_size=8,
                              model=SMALL_SYNC)  # fmt: skip
    status = train_audio_main(config, console=Console(file=buffer, width=100, soft_wrap=True))
    assert status == 0, buffer.getvalue()
    encoder, spec = load_audio_encoder(output)
    assert spec.kind == "mel" and encoder.output_dim == 16
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", output.name])
    assert (folder / "notes.txt").read_text() == "keep\n"


def test_ns_train_trains_on_an_awkward_dataset_in_a_unicode_folder(awkward_datasets, tmp_path, monkeypatch) -> None:
    """The 5.1-audio dataset, at a path with spaces and accents, through nerfstudio's loop; an output folder that
    already holds unrelated files keeps them."""
    from nerfstudio.scripts import train

    data = awkward_datasets["audio_5_1"]
    outputs = tmp_path / "sorties ü"
    (outputs / "old experiments").mkdir(parents=True)
    (outputs / "old experiments" / "notes.txt").write_text("keep\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ns-train", "jean-small", "--data", str(data), "--output-dir", str(outputs),
                                      *NS_TRAIN_SMALL])  # fmt: skip
    train.entrypoint()
    checkpoints = sorted(outputs.rglob("step-*.ckpt"))
    assert checkpoints and checkpoints[-1].name == "step-000000001.ckpt"
    assert (outputs / "old experiments" / "notes.txt").read_text() == "keep\n"
    import torch

    state = torch.load(checkpoints[-1], map_location="cpu")
    assert state["step"] == 1 and np.isfinite([float(v.float().abs().sum()) for v in state["pipeline"].values()]).all()
