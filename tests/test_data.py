"""The `jean-data` dataparser and the JEAN datamanager."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.data.dataparser import JeanDataParserConfig
from jean_nerfstudio.data.datamanager import masks_to_boxes


def test_cameras_times_split_and_metadata(synthetic_dataset):
    parser = JeanDataParserConfig(data=synthetic_dataset).setup()
    train = parser.get_dataparser_outputs("train")
    held_out = parser.get_dataparser_outputs("val")
    clip = ProcessedClip.open(synthetic_dataset)
    assert len(train.image_filenames) == len(clip.train_indices) and len(held_out.image_filenames) == len(clip.eval_indices)
    assert parser.includes_time
    last = clip.num_frames - 1
    torch.testing.assert_close(held_out.cameras.times[:, 0], torch.tensor(clip.eval_indices, dtype=torch.float32) / last)
    assert held_out.cameras.metadata[C.META_POSE].shape == (len(clip.eval_indices), 12)
    # One key carries the opened clip; everything else (all frames' cameras, intrinsics, box, scale) is read from it.
    assert set(train.metadata) == {C.DATAPARSER_CLIP, "segmentation_filenames"}
    carried = train.metadata[C.DATAPARSER_CLIP]
    assert isinstance(carried, ProcessedClip) and carried.root == clip.root
    all_c2w = carried.camera_to_worlds()
    assert all_c2w.shape == (clip.num_frames, 3, 4)
    torch.testing.assert_close(held_out.cameras.camera_to_worlds, torch.from_numpy(all_c2w[clip.eval_indices]))
    assert float(held_out.cameras.fx[0, 0]) == pytest.approx(carried.intrinsics.fx)
    assert int(held_out.cameras.width[0, 0]) == carried.intrinsics.width
    torch.testing.assert_close(train.scene_box.aabb, torch.from_numpy(carried.scene_box))
    assert carried.scene_scale_cm > 0


def test_frame_without_camera_is_one_line(synthetic_dataset, tmp_path, capsys):
    """A transforms file that lost a frame's camera is named with the fix, not a KeyError in the model."""
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_dataset, bad)
    transforms = json.loads((bad / C.TRANSFORMS_FILE).read_text())
    transforms["frames"] = [f for f in transforms["frames"] if int(f["frame_index"]) != 3]
    (bad / C.TRANSFORMS_FILE).write_text(json.dumps(transforms))
    with pytest.raises(DatasetError, match=r"frames \[3\] have no camera.*jean-process"):
        ProcessedClip.open(bad).camera_to_worlds()
    with pytest.raises(SystemExit) as exited:  # under ns-train: one red line, exit 2
        JeanDataParserConfig(data=bad).setup().get_dataparser_outputs("train")
    assert exited.value.code == 2 and "have no camera" in capsys.readouterr().err


def edited_copy(src, dst, **changes):
    shutil.copytree(src, dst)
    meta = json.loads((dst / C.METADATA_FILE).read_text())
    meta.update(changes)
    (dst / C.METADATA_FILE).write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "changes,expected",
    [({"complete": False}, "unfinished"), ({"contract_version": 0}, "contract version 0")],
)
def test_refuses_unfinished_or_foreign_datasets(synthetic_dataset, tmp_path, changes, expected):
    bad = edited_copy(synthetic_dataset, tmp_path / "bad", **changes)
    with pytest.raises(DatasetError, match=expected):
        ProcessedClip.open(bad)
    # Through the CLI path: one red line, exit code 2, no traceback.
    code = (
        "from jean_nerfstudio.data.dataparser import JeanDataParserConfig;"
        f"JeanDataParserConfig(data=__import__('pathlib').Path({str(bad)!r})).setup().get_dataparser_outputs('train')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jean: error:") and expected in lines[0], run.stderr  # `python -c`
    assert "Traceback" not in run.stdout + run.stderr
    assert "jean-process" in lines[0]  # the fix is named


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a jean dataset"):
        ProcessedClip.open(tmp_path)
    with pytest.raises(DatasetError, match="no such dataset folder"):
        ProcessedClip.open(tmp_path / "missing")


def test_masks_to_boxes():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    fallback = torch.tensor([0, 0, 12, 10]).expand(2, 4)
    boxes = masks_to_boxes(masks, fallback, margin=1)
    assert boxes[0].tolist() == [2, 1, 8, 6]
    assert boxes[1].tolist() == [0, 0, 12, 10]  # empty mask: the fallback


def test_sampler_groups_rays_by_frame_and_favours_the_face(synthetic_dataset):
    from conftest import small_pipeline_config

    config = small_pipeline_config(synthetic_dataset)
    config.pipeline.datamanager.frames_per_batch = 3
    config.pipeline.datamanager.train_num_rays_per_batch = 3000
    config.pipeline.datamanager.head_ray_fraction = 0.6
    config.pipeline.datamanager.mouth_ray_fraction = 0.2
    dm = config.pipeline.datamanager.setup(device="cpu")
    bundle, batch = dm.next_train(0)
    assert bundle.origins.shape == (3000, 3)
    assert len(torch.unique(batch["indices"][:, 0])) == 3
    labels = batch["labels"]
    head_share = ((labels == C.LABEL_HEAD) | (labels == C.LABEL_MOUTH)).float().mean()
    store = dm.train_frames
    base_share = ((store.labels == C.LABEL_HEAD) | (store.labels == C.LABEL_MOUTH)).float().mean()
    assert head_share > base_share + 0.2  # importance sampling works
    # Pixels and labels returned are the ones at the sampled indices.
    f, y, x = batch["indices"][7].tolist()
    torch.testing.assert_close(batch["image"][7], store.images[f, y, x].float() / 255.0)


def test_eval_batches_cover_whole_frames_uniformly(synthetic_dataset):
    """The logged eval loss should estimate the held-out frames' loss: no face weighting in evaluation batches."""
    from conftest import small_pipeline_config

    config = small_pipeline_config(synthetic_dataset)
    config.pipeline.datamanager.eval_num_rays_per_batch = 4000
    config.pipeline.datamanager.head_ray_fraction = 0.6
    config.pipeline.datamanager.mouth_ray_fraction = 0.3
    dm = config.pipeline.datamanager.setup(device="cpu")
    _, batch = dm.next_eval(0)
    labels = batch["labels"]
    store = dm.eval_frames
    frames = torch.unique(batch["indices"][:, 0])
    base = store.labels[frames]
    face = lambda x: ((x == C.LABEL_HEAD) | (x == C.LABEL_MOUTH)).float().mean()  # noqa: E731
    # With the training shares (0.9 of rays on the face) the sampled face share would be far above the frames' own.
    assert abs(face(labels) - face(base)) < 0.05
    assert abs((labels == C.LABEL_MOUTH).float().mean() - (base == C.LABEL_MOUTH).float().mean()) < 0.03


def test_ray_fractions_that_leave_no_valid_share_fail_in_one_line(synthetic_dataset, capsys):
    from conftest import small_pipeline_config

    from jean_nerfstudio.data.datamanager import RayShareError, check_ray_fractions

    check_ray_fractions(0.5, 0.5)  # the whole budget on the face: allowed
    for head, mouth in ((0.5, 0.6), (-0.1, 0.3), (0.5, 1.2)):
        with pytest.raises(RayShareError, match="mouth-ray-fraction"):
            check_ray_fractions(head, mouth)
    config = small_pipeline_config(synthetic_dataset)
    config.pipeline.datamanager.mouth_ray_fraction = 0.7
    with pytest.raises(SystemExit) as exited:
        config.pipeline.datamanager.setup(device="cpu")
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "together at most 1" in err and "\n" not in err
