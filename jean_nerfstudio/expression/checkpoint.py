"""Expression-encoder checkpoints: weights plus everything needed to use them correctly.

A checkpoint records the encoder config, the input-layout signature (backend, landmark count, channel names, speech
low-pass), the window in seconds and the fps it was trained at, the objective (decoder) state so end-to-end training
can continue the same objective, the datasets, and the probe numbers. It holds only tensors and plain Python values,
so it loads with `torch.load(weights_only=True)`. Files are written atomically (write-then-rename).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from jean_nerfstudio.errors import UserError
from jean_nerfstudio.expression.encoder import ExpressionEncoder, ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionInputs, ExpressionLayout
from jean_nerfstudio.expression.objective import ExpressionObjective, ExpressionObjectiveConfig
from jean_nerfstudio.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "jean-expression-encoder"
CHECKPOINT_VERSION = 1


class ExpressionCheckpointError(UserError, RuntimeError):
    """An expression-encoder checkpoint is missing, unreadable, foreign, or of another version."""


@dataclass
class ExpressionCheckpoint:
    """A loaded checkpoint: the encoder (eval mode) and what came with it."""

    encoder: ExpressionEncoder
    """Ready to use at `encoder.fps` (call `set_fps` for another rate)."""
    objective: ExpressionObjective
    """The objective with its trained decoder (for end-to-end fine-tuning and decoding codes back to channels)."""
    layout: ExpressionLayout
    """The input layout the encoder reads; check inputs with `layout.check_compatible`-style `check_inputs`."""
    trained_fps: float
    """Frame rate the encoder was trained at."""
    datasets: List[str]
    """Clips it was trained on."""
    metrics: Dict[str, Any]
    """Probe numbers and training facts recorded at save time."""

    def check_inputs(self, inputs: ExpressionInputs) -> None:
        """One-line `ExpressionLayoutError` if `inputs` do not have this encoder's layout."""
        inputs.layout.check_compatible(self.layout.signature(), what=inputs.source or "expression inputs")


def _plain_config(config: Any) -> Dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _config_from(cls: type, values: Dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    kwargs = {}
    for name, value in values.items():
        if name in known:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def save_expression_encoder(
    path: Path | str,
    encoder: ExpressionEncoder,
    objective: ExpressionObjective,
    datasets: Sequence[str] = (),
    metrics: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically; returns its path."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "encoder_config": _plain_config(encoder.config),
        "objective_config": _plain_config(objective.config),
        "input_dim": encoder.input_dim,
        "fps": float(encoder.fps),
        "window_seconds": float(encoder.config.window_seconds),
        "layout": objective.layout.to_dict(),
        "datasets": [str(d) for d in datasets],
        "metrics": metrics or {},
        "encoder_state": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "objective_state": {k: v.detach().cpu() for k, v in objective.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_expression_encoder(
    path: Path | str, fps: Optional[float] = None, map_location: str | torch.device = "cpu"
) -> ExpressionCheckpoint:
    """Load a checkpoint written by `save_expression_encoder` (or `jean-train-expression`).

    Args:
        path: the .ckpt file.
        fps: run the encoder at this frame rate (the window stays the same in seconds); None keeps the trained fps.
        map_location: device for the tensors.

    Raises:
        ExpressionCheckpointError: missing, unreadable, not an expression-encoder checkpoint, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpressionCheckpointError(
            f"{path}: no such expression-encoder checkpoint; train one with `jean-train-expression DATASETS... "
            f"--output {path}`."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated / non-torch files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExpressionCheckpointError(f"{path}: unreadable checkpoint ({first_line[:160]}).") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ExpressionCheckpointError(
            f"{path}: not an expression-encoder checkpoint (no '{CHECKPOINT_FORMAT}' format tag); "
            "pass the file written by `jean-train-expression --output`."
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ExpressionCheckpointError(
            f"{path}: expression-encoder checkpoint version {payload.get('version')}, this code reads "
            f"{CHECKPOINT_VERSION}; retrain with `jean-train-expression`."
        )
    try:
        enc_config: ExpressionEncoderConfig = _config_from(ExpressionEncoderConfig, payload["encoder_config"])
        obj_config: ExpressionObjectiveConfig = _config_from(ExpressionObjectiveConfig, payload["objective_config"])
        layout = ExpressionLayout.from_dict(payload["layout"])
        trained_fps = float(payload["fps"])
        encoder = enc_config.setup(input_dim=int(payload["input_dim"]), fps=trained_fps)
        encoder.load_state_dict(payload["encoder_state"])
        objective = obj_config.setup(layout=layout, code_dim=encoder.output_dim)
        objective.load_state_dict(payload["objective_state"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ExpressionCheckpointError(f"{path}: corrupt checkpoint ({str(err).splitlines()[0][:160]}).") from None
    if fps is not None:
        encoder.set_fps(fps)
    encoder.to(map_location).eval()
    objective.to(map_location).eval()
    return ExpressionCheckpoint(
        encoder=encoder,
        objective=objective,
        layout=layout,
        trained_fps=trained_fps,
        datasets=list(payload.get("datasets", [])),
        metrics=dict(payload.get("metrics", {})),
    )


def build_expression_encoder(
    inputs: ExpressionInputs,
    checkpoint: Optional[Path | str | ExpressionCheckpoint] = None,
    encoder_config: Optional[ExpressionEncoderConfig] = None,
    objective_config: Optional[ExpressionObjectiveConfig] = None,
) -> Tuple[ExpressionEncoder, ExpressionObjective]:
    """The encoder and objective the NeRF model trains end to end on one clip.

    From a checkpoint (a path, or one already loaded with `load_expression_encoder`: its layout is checked against
    `inputs`, the encoder runs at the clip's fps, the decoder is kept; `objective_config` replaces the checkpoint's loss
    weights if given), or from scratch (`encoder_config`, input normalization fitted on
    the clip's training frames). Both are returned in train mode; freeze the encoder with `requires_grad_(False)`.

    >>> encoder, objective = build_expression_encoder(inputs)  # doctest: +SKIP
    >>> codes = encoder(inputs.values)  # [N, D]  # doctest: +SKIP
    """
    if checkpoint is not None:
        if isinstance(checkpoint, ExpressionCheckpoint):
            loaded = checkpoint
            loaded.encoder.set_fps(inputs.fps)
        else:
            loaded = load_expression_encoder(checkpoint, fps=inputs.fps)
        loaded.check_inputs(inputs)
        encoder, objective = loaded.encoder, loaded.objective
        if objective_config is not None:
            replacement = objective_config.setup(layout=loaded.layout, code_dim=encoder.output_dim)
            replacement.decoder.load_state_dict(objective.decoder.state_dict())
            objective = replacement
    else:
        encoder = (encoder_config or ExpressionEncoderConfig()).setup(input_dim=inputs.input_dim, fps=inputs.fps)
        rows = inputs.train_frames if inputs.train_frames is not None else list(range(inputs.num_frames))
        encoder.fit_input_normalization(inputs.values[rows])
        objective = (objective_config or ExpressionObjectiveConfig()).setup(
            layout=inputs.layout, code_dim=encoder.output_dim
        )
    return encoder.train(), objective.train()
