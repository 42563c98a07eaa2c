"""Loading a trained JEAN pipeline from its `config.yml`, through nerfstudio's own `eval_setup`.

Everything that can go wrong because of the user's files is checked *before* nerfstudio builds the pipeline, so it
ends as one line (`RenderInputError`, `DatasetError`) instead of nerfstudio's assertion or `sys.exit(1)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from jean_nerfstudio.render.errors import RenderInputError


@dataclass
class LoadedJean:
    """A trained JEAN pipeline ready to render."""

    config: object
    """The `TrainerConfig` read from config.yml."""
    pipeline: object
    """The nerfstudio pipeline (its `model` is a `JeanModel`)."""
    checkpoint: Path
    """The checkpoint file that was loaded."""
    step: int
    """Its training step."""

    @property
    def model(self):
        return self.pipeline.model


def read_trainer_config(config_path: Path):
    """The `TrainerConfig` of `config_path`, or a one-line error if it is not a JEAN config with checkpoints."""
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    from jean_nerfstudio.models.jean_model import JeanModelConfig

    config_path = Path(config_path)
    if not config_path.is_file():
        raise RenderInputError(
            f"{config_path}: no such config; pass the config.yml of a training run (outputs/<data>/jean*/<time>/config.yml)."
        )
    try:
        config = yaml.load(config_path.read_text(encoding="utf-8"), Loader=yaml.Loader)
    except Exception as err:  # noqa: BLE001 - yaml raises many types, including import errors of foreign classes
        raise RenderInputError(
            f"{config_path}: not a readable nerfstudio config ({type(err).__name__}); pass the config.yml that ns-train wrote."
        ) from err
    if not isinstance(config, TrainerConfig):
        raise RenderInputError(f"{config_path}: not a nerfstudio training config; pass the config.yml that ns-train wrote.")
    model_config = getattr(getattr(config, "pipeline", None), "model", None)
    if not isinstance(model_config, JeanModelConfig):
        raise RenderInputError(
            f"{config_path}: not a jean model (method '{config.method_name}'); jean-render and jean-eval need a run of "
            "`ns-train jean` or `ns-train jean-small`."
        )
    return config


def load_jean(
    config_path: Path,
    data: Optional[Path] = None,
    eval_num_rays_per_chunk: Optional[int] = None,
    test_mode: Literal["test", "val", "inference"] = "inference",
) -> LoadedJean:
    """Load a trained JEAN pipeline for rendering (weights from the latest checkpoint of the run).

    Args:
        config_path: the run's config.yml, or an export's (`jean-export`; its paths are relative to its folder).
        data: the processed clip, when it moved since training (default: the path stored in the config).
        eval_num_rays_per_chunk: rays per forward pass (memory vs speed); default: the config's.
        test_mode: nerfstudio's datamanager mode; 'inference' reads no images.
    """
    from nerfstudio.utils.eval_utils import eval_setup

    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.render.exported import export_root_of, localize, read_manifest
    from jean_nerfstudio.models.jean_model import JeanModel

    config_path = Path(config_path)
    config = read_trainer_config(config_path)
    export_root = export_root_of(config_path)
    if export_root is not None:
        read_manifest(export_root)  # one line when a file of the export is missing or cut short
        localize(config, export_root)
    clip_dir = Path(data) if data is not None else Path(config.pipeline.datamanager.data or config.pipeline.datamanager.dataparser.data)
    ProcessedClip.open(clip_dir)  # DatasetError (one line) when the training clip is gone or unfinished
    checkpoints = config.get_checkpoint_dir()
    if not checkpoints.is_dir() or not any(checkpoints.glob("step-*.ckpt")):
        raise RenderInputError(
            f"{config_path}: no checkpoint in {checkpoints}; train longer (checkpoints are saved every "
            f"{config.steps_per_save} steps) or run from the folder ns-train ran in (output_dir is '{config.output_dir}')."
        )

    def update(loaded):
        if export_root is not None:
            localize(loaded, export_root)
        if data is not None:
            loaded.pipeline.datamanager.data = clip_dir
            loaded.pipeline.datamanager.dataparser.data = clip_dir
        return loaded

    config, pipeline, checkpoint, step = eval_setup(
        config_path, eval_num_rays_per_chunk=eval_num_rays_per_chunk, test_mode=test_mode, update_config_callback=update
    )
    if not isinstance(pipeline.model, JeanModel):  # a config edited by hand to point at another model class
        raise RenderInputError(f"{config_path}: not a jean model ({type(pipeline.model).__name__}).")
    return LoadedJean(config=config, pipeline=pipeline, checkpoint=Path(checkpoint), step=int(step))
