"""`jean-export`: a trained head in one folder that renders, evaluates new audio and opens in the viewer without the
dataset it was trained on, on another machine or another installation.

    jean-export --load-config outputs/<clip>/jean/<time>/config.yml --output heads/alice
    jean-render --load-config heads/alice/config.yml --audio speech.wav --output alice.mp4
    jean-eval --load-config heads/alice/config.yml --new-audio speech.wav
    cd heads/alice && ns-viewer --load-config config.yml

What driving a trained head reads, and so what the folder holds (docs/export.md):

    config.yml                    the run's config; every path in it is relative to this folder
    jean_export.json              what is inside (every file with its size), where it came from, the step
    dataset/                      the processed clip WITHOUT its frames and label maps: jean.json, transforms.json
                                  (poses, intrinsics), audio.wav, background.png, features/ (audio windows,
                                  expression inputs, landmarks)
    encoders/                     the audio and expression encoder checkpoints the head was built with (the audio
                                  front-end spec lives in the audio one), shipped ones included: a later
                                  jean_nerfstudio with retrained shipped weights still rebuilds this head
    <method>/nerfstudio_models/   the last checkpoint, model weights only (no optimizer state)

Design: the model is built exactly as after training, from a processed clip (nerfstudio's dataparser -> model
path); the export only leaves out what rendering never reads (frames are 90%+ of a dataset) and marks the copy
(`frames_omitted` in jean.json), so the datamanager serves cameras without frames and refuses to train on it.
nerfstudio resolves a config's relative paths against the working directory: `jean-render` and `jean-eval` resolve
an export's against its folder, `ns-viewer` is run from inside it (as for any nerfstudio run, whose paths are
relative to where `ns-train` ran).

The folder appears under its final name only when complete (it is written beside it under a temporary name, then
renamed), and it is loaded once before that, exactly as jean-render will load it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import tyro

from jean_nerfstudio import constants as C
from jean_nerfstudio.render.errors import RenderInputError, exit_on_user_error
from jean_nerfstudio.render.exported import (
    CONFIG_FILE,
    DATASET_DIR,
    ENCODERS_DIR,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST_FILE,
    export_root_of,
    localize,
    read_manifest,
)

COMMAND = "jean-export"
"""The console script; error lines start with it."""
OMITTED_DIRS = (C.IMAGES_DIR, C.SEGMENTATION_DIR)
"""What the slim dataset copy leaves out: nothing that drives a trained head reads them."""


@dataclass
class ExportConfig:
    """Pack a trained JEAN head into one folder that renders without its dataset."""

    load_config: Path
    """The config.yml of a `ns-train jean` / `ns-train jean-small` run."""
    output: Path
    """The folder to write (it must not exist yet, unless --force replaces an earlier export there)."""
    data: Optional[Path] = None
    """The training clip's processed folder, if it moved since training."""
    force: bool = False
    """Replace an earlier export at --output (never a folder that is not one)."""


# ---------------------------------------------------------------------------------------------------------------------
# writing one
# ---------------------------------------------------------------------------------------------------------------------
def latest_checkpoint(config: Any, config_path: Path) -> Path:
    """The run's last `step-*.ckpt`: under the run folder as the config names it (relative to where ns-train ran),
    else beside the config.yml (ns-train writes both into one folder), so jean-export works from any folder."""
    candidates = [config.get_checkpoint_dir(), Path(config_path).parent / config.relative_model_dir]
    for folder in candidates:
        steps = sorted(Path(folder).glob("step-*.ckpt")) if Path(folder).is_dir() else []
        if steps:
            return max(steps, key=lambda p: int(p.stem.split("-")[-1]))
    raise RenderInputError(
        f"{config_path}: no checkpoint in {candidates[0]} or {candidates[1]}; train longer (checkpoints are saved "
        f"every {config.steps_per_save} steps)."
    )


def slim_dataset_files(clip: Any) -> List[str]:
    """Files of `clip` (relative paths) that driving a trained head reads: everything but the frames and label maps."""
    names = [C.METADATA_FILE, C.TRANSFORMS_FILE, C.BACKGROUND_FILE, str(clip.metadata["audio"]["file"])]
    names += [f"{C.FEATURES_DIR}/{file_name}" for file_name in C.FEATURE_FILES.values()]
    return names


def write_slim_dataset(clip: Any, dest: Path) -> Dict[str, Any]:
    """Copy what driving reads of `clip` into `dest`, marked as a copy without frames; returns what was left out."""
    from jean_nerfstudio.utils.atomic import write_json

    for name in slim_dataset_files(clip)[1:]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip.root / name, dest / name)
    if not clip.has_frames:  # an export of an export: what the first one left out
        omitted = dict(clip.metadata[C.FRAMES_OMITTED_KEY])
        write_json(dest / C.METADATA_FILE, clip.metadata)
        return omitted
    omitted = {"folders": list(OMITTED_DIRS), "num_files": 0, "bytes": 0, "from": str(Path(clip.root).resolve())}
    for folder in OMITTED_DIRS:
        for file in (clip.root / folder).rglob("*") if (clip.root / folder).is_dir() else []:
            if file.is_file():
                omitted["num_files"] += 1
                omitted["bytes"] += file.stat().st_size
    metadata = dict(clip.metadata)
    metadata[C.FRAMES_OMITTED_KEY] = omitted
    write_json(dest / C.METADATA_FILE, metadata)  # last: the copy is a finished dataset only once it is all there
    return omitted


def copy_encoders(model_config: Any, dest: Path) -> Dict[str, Dict[str, Optional[str]]]:
    """Copy the encoder checkpoints the model is built with into `dest` and point `model_config` at the copies
    (relative to the export). Returns, per encoder, the original config value and the copy (None: none used)."""
    from jean_nerfstudio.weights import resolve_checkpoint

    record: Dict[str, Dict[str, Optional[str]]] = {}
    for kind in ("audio", "expression"):
        field_name = f"{kind}_encoder_checkpoint"
        value = getattr(model_config, field_name)
        used = not (kind == "expression" and getattr(model_config, "expression_encoder", "") == "mlp")
        source = resolve_checkpoint(value, kind) if used else None  # the 'mlp' expression encoder reads none
        if source is None:
            setattr(model_config, field_name, None)
            record[kind] = {"from": None if value is None else str(value), "file": None}
            continue
        if not Path(source).is_file():
            raise RenderInputError(
                f"{source}: the {kind} encoder checkpoint this head was trained with is gone; put it back there, or "
                "export on the machine that trained the head."
            )
        name = f"{ENCODERS_DIR}/{kind}_encoder.ckpt"
        (dest / ENCODERS_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest / name)
        setattr(model_config, field_name, Path(name))
        record[kind] = {"from": str(value), "file": name}
    return record


def write_model_checkpoint(source: Path, dest: Path) -> int:
    """Copy the pipeline weights and the step of a nerfstudio checkpoint (no optimizer, scheduler or scaler state:
    nothing that renders reads them); returns the step."""
    import torch

    try:
        state = torch.load(source, map_location="cpu", weights_only=False)
        pipeline, step = state["pipeline"], int(state["step"])
    except Exception as err:  # noqa: BLE001 - a cut-short or foreign file fails in many ways
        raise RenderInputError(f"{source}: not a readable nerfstudio checkpoint ({type(err).__name__}); train again or "
                               "pass the config.yml of another run.") from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "pipeline": pipeline}, dest)
    return step


def _folder_bytes(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _check_output(output: Path, force: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise RenderInputError(f"{output}: is a file; pass a new folder as --output.")
    if export_root_of(output / CONFIG_FILE) is not None:
        if not force:
            raise RenderInputError(f"{output}: an export is already there; pass --force to replace it, or another "
                                   "--output.")
        return
    if any(output.iterdir()):
        raise RenderInputError(f"{output}: exists and is not a jean export; pass a new folder as --output (jean-export "
                               "never replaces other files).")


def _verify(folder: Path) -> None:
    """Load the export as jean-render does (its own dataset and encoders), dropping the pipeline afterwards."""
    from jean_nerfstudio.render.loading import load_jean

    loaded = load_jean(folder / CONFIG_FILE, test_mode="inference")
    del loaded


def _write_config_and_manifest(folder: Path, trainer: Any, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """config.yml, then the manifest listing every file with its size (written last)."""
    import yaml

    (folder / CONFIG_FILE).write_text(yaml.dump(trainer), encoding="utf-8")
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    files = _folder_bytes(folder)
    manifest = {**manifest, "bytes": sum(files.values()), "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _replace(tmp: Path, output: Path) -> None:
    """Move the finished folder to `output`, replacing an earlier export there (or an empty folder)."""
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output)


def export(config: ExportConfig) -> Tuple[Path, Dict[str, Any]]:
    """Write the export folder; returns it and its manifest."""
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.expression.inputs import ExpressionLayoutError
    from jean_nerfstudio.render.loading import read_trainer_config
    from jean_nerfstudio.weights import is_shipped

    config_path = Path(config.load_config)
    trainer = read_trainer_config(config_path)  # one line for a missing, foreign or non-jean config
    source_root = export_root_of(config_path)
    if source_root is not None:  # re-exporting an export: its paths are relative to its folder
        read_manifest(source_root)
        localize(trainer, source_root)
    datamanager = trainer.pipeline.datamanager
    clip_dir = Path(config.data) if config.data is not None else Path(datamanager.data or datamanager.dataparser.data)
    clip = ProcessedClip.open(clip_dir)  # DatasetError (one line) when the training clip is gone or unfinished
    output = Path(config.output)
    _check_output(output, config.force)
    checkpoint = latest_checkpoint(trainer, config_path)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        omitted = write_slim_dataset(clip, tmp / DATASET_DIR)
        encoders = copy_encoders(trainer.pipeline.model, tmp)
        # The run folder becomes the export folder: output_dir/experiment/method/timestamp = ./././<method>/.
        trainer.output_dir, trainer.experiment_name, trainer.timestamp = Path("."), ".", "."
        trainer.load_dir, trainer.load_checkpoint, trainer.load_step = None, None, None
        for holder in (trainer, datamanager, datamanager.dataparser):  # (TrainerConfig.data: ns-train's alias)
            if hasattr(holder, "data"):
                holder.data = Path(DATASET_DIR)
        model_file = Path(trainer.method_name) / trainer.relative_model_dir / checkpoint.name
        step = write_model_checkpoint(checkpoint, tmp / model_file)
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "jean_nerfstudio": _version(),
            "method": trainer.method_name,
            "step": step,
            "source": {"config": str(config_path.resolve()), "checkpoint": str(checkpoint.resolve()),
                       "dataset": str(Path(clip.root).resolve())},
            "encoders": encoders,
            "omitted": omitted,
        }
        manifest = _write_config_and_manifest(tmp, trainer, manifest)
        try:
            _verify(tmp)
        except ExpressionLayoutError:
            if not is_shipped(encoders["expression"]["from"]):
                raise
            # The shipped expression encoder did not fit this clip's landmark layout, so training fell back to an
            # encoder trained from scratch with the head (models.sources): the export builds that one too.
            (tmp / str(encoders["expression"]["file"])).unlink()
            trainer.pipeline.model.expression_encoder_checkpoint = None
            encoders["expression"]["file"] = None
            manifest = _write_config_and_manifest(tmp, trainer, manifest)
            _verify(tmp)
        _replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output, manifest


def _version() -> Optional[str]:
    import importlib.metadata

    try:
        return importlib.metadata.version("jean_nerfstudio")
    except importlib.metadata.PackageNotFoundError:
        return None


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main(config: ExportConfig) -> Tuple[Path, Dict[str, Any]]:
    """Run the command (one red line and exit status 2 on a user error); prints what was written."""
    from rich.console import Console
    from rich.markup import escape

    with exit_on_user_error(COMMAND):
        output, manifest = export(config)
    files = manifest["files"]
    parts = {
        "dataset (no frames)": sum(v for k, v in files.items() if k.startswith(DATASET_DIR + "/")),
        "encoders": sum(v for k, v in files.items() if k.startswith(ENCODERS_DIR + "/")),
        "model": sum(v for k, v in files.items() if k.endswith(".ckpt") and not k.startswith(ENCODERS_DIR + "/")),
    }
    detail = ", ".join(f"{name} {_megabytes(size)}" for name, size in parts.items())
    Console().print(
        f"[bold green]Exported[/bold green] {escape(str(output))}: {_megabytes(manifest['bytes'])} ({detail}; left out "
        f"{manifest['omitted']['num_files']} frame and label files, {_megabytes(manifest['omitted']['bytes'])}), step "
        f"{manifest['step']}. Render with `jean-render --load-config {escape(str(output / CONFIG_FILE))} --audio "
        "SPEECH`.",
        soft_wrap=True,
        highlight=False,
    )
    return output, manifest


def entrypoint() -> None:
    """Console script `jean-export`."""
    from jean_nerfstudio.render.cli import quiet_library_warnings

    quiet_library_warnings()
    main(tyro.cli(ExportConfig, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    entrypoint()
