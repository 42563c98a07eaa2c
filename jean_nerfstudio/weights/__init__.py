"""The pre-trained encoders that ship inside the package (see MODEL_CARD.md beside this file).

`jean-pretrain` writes them; `ns-train jean` and `jean-small` load them by default (both frozen; the audio reaches
the head through the clip's speech-driven mouth geometry), and `jean-process --av-offset auto` measures offsets with the
audio checkpoint's lip-sync towers.

A model config names them with the value `shipped`; `none` (or `None`) asks for per-subject training instead, and
any other value is a path to a checkpoint of one's own::

    --pipeline.model.audio-encoder-checkpoint none            # per-subject log-mel net, trained with the head
    --pipeline.model.expression-encoder-checkpoint my.ckpt    # an expression encoder pre-trained elsewhere
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from jean_nerfstudio.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent
AUDIO_ENCODER_FILE = "audio_encoder.ckpt"
EXPRESSION_ENCODER_FILE = "expression_encoder.ckpt"
MODEL_CARD_FILE = "MODEL_CARD.md"
SHIPPED = "shipped"
"""The config value that names a shipped checkpoint."""

EncoderKind = Literal["audio", "expression"]
_FILES = {"audio": AUDIO_ENCODER_FILE, "expression": EXPRESSION_ENCODER_FILE}


class ShippedWeightsMissing(UserError, FileNotFoundError):
    """The package was installed without its encoder weights (one-line message with the fix)."""


def shipped_path(kind: EncoderKind) -> Path:
    """Where the shipped `kind` encoder lives (whether or not the file is there)."""
    return WEIGHTS_DIR / _FILES[kind]


def _shipped(kind: EncoderKind) -> Path:
    path = shipped_path(kind)
    if not path.is_file():
        raise ShippedWeightsMissing(
            f"{path}: the shipped {kind} encoder is missing from this installation; reinstall jean_nerfstudio with its "
            f"package data, regenerate it with `jean-pretrain CORPUS_DIR`, or pass "
            f"--pipeline.model.{kind}-encoder-checkpoint none to train a per-subject encoder"
        )
    return path


def shipped_audio_encoder() -> Path:
    """The shipped stage-1 lip-aligned audio encoder (also the lip-sync model of `jean-process --av-offset`)."""
    return _shipped("audio")


def shipped_expression_encoder() -> Path:
    """The shipped transformer expression encoder."""
    return _shipped("expression")


def is_shipped(value: Union[None, str, Path]) -> bool:
    return value is not None and str(value).strip().lower() == SHIPPED


def resolve_checkpoint(value: Union[None, str, Path], kind: EncoderKind) -> Optional[Path]:
    """A config's checkpoint value as a file: `shipped` -> the packaged file, `none`/None -> None, else the path."""
    if value is None or str(value).strip().lower() in ("none", ""):
        return None
    if is_shipped(value):
        return _shipped(kind)
    return Path(value)
