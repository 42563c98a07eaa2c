"""A frozen transformers speech backbone (Wav2Vec2 / HuBERT) as an audio front end.

The weights come from a local directory (`save_pretrained`) or from the user's Hugging Face cache; nothing is
downloaded unless the spec allows it, so an offline machine gets a one-line error that says what to do instead of a
long retry loop. The backbone is never trained here and never stored in our checkpoints (only its name, layer and
feature facts are), like the frozen networks of instruct-nerf2nerf.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from jean_nerfstudio.audio.errors import FrontEndError
from jean_nerfstudio.constants import AUDIO_SAMPLE_RATE


class BackboneUnavailableError(FrontEndError):
    """The requested speech backbone cannot be loaded (not on disk, not in the cache, or of another kind)."""


@dataclass(frozen=True)
class BackboneFacts:
    """What the rest of the front end needs to know about a loaded backbone."""

    hidden_size: int
    """Channels of every hidden state."""
    num_layers: int
    """Transformer layers; hidden states are indexed 0..num_layers."""
    stride: int
    """Samples per feature frame (320 for the usual configs: 50 frames/s at 16 kHz)."""
    receptive_field: int
    """Samples seen by one feature frame of the convolutional feature encoder (400 for the usual configs)."""

    @property
    def frame_rate(self) -> float:
        return AUDIO_SAMPLE_RATE / self.stride


_CACHE: Dict[Tuple[str, str, str], torch.nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def load_backbone(
    kind: str, source: str, allow_download: bool = False, device: Optional[torch.device | str] = None
) -> torch.nn.Module:
    """Load (once per process) a frozen Wav2Vec2 or HuBERT model in eval mode.

    Args:
        kind: "wav2vec2" or "hubert"; the loaded config's model type must match.
        source: a local directory holding config.json + weights, or a Hugging Face model name in the local cache.
        allow_download: fetch a named model that is not cached (needs internet).
        device: where the model runs (default CPU).

    Raises:
        BackboneUnavailableError: with a one-line message saying how to make the backbone available.
    """
    if kind not in ("wav2vec2", "hubert"):
        raise BackboneUnavailableError(f"unknown speech backbone kind {kind!r}; use wav2vec2 or hubert")
    if not source:
        raise BackboneUnavailableError(
            f"the {kind} front end needs --frontend.backbone: a local model directory or a Hugging Face model name"
        )
    device_name = str(torch.device(device) if device is not None else torch.device("cpu"))
    key = (kind, str(source), device_name)
    with _CACHE_LOCK:
        if key not in _CACHE:
            model = _load(kind, str(source), allow_download)
            model.eval().requires_grad_(False)
            _CACHE[key] = model.to(device_name)
        return _CACHE[key]


def _load(kind: str, source: str, allow_download: bool) -> torch.nn.Module:
    import transformers  # deferred: 4 s of import that the mel path never pays

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model_class = {"wav2vec2": transformers.Wav2Vec2Model, "hubert": transformers.HubertModel}[kind]
    path = Path(source).expanduser()
    # "org/name" is a hub name; anything rooted (./x, /x, ~/x) is meant as a folder.
    looks_like_path = source.startswith((".", "/", "~"))
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise BackboneUnavailableError(f"{path}: not a transformers model directory (config.json missing)")
        config = transformers.AutoConfig.from_pretrained(str(path))
        _check_kind(kind, config.model_type, source)
        try:
            model = model_class.from_pretrained(str(path))
            model._jean_do_normalize = _do_normalize(transformers, str(path), local_files_only=True)
            return model
        except (OSError, ValueError) as err:
            raise BackboneUnavailableError(f"{path}: the {kind} weights cannot be loaded ({_first_line(err)})") from err
    if looks_like_path or path.exists():
        raise BackboneUnavailableError(f"{source}: no such model directory; give a folder saved with save_pretrained")
    # A hub name: only the local cache unless downloads are allowed (offline, from_pretrained would retry for ~25 s).
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=not allow_download)
        _check_kind(kind, config.model_type, source)
        model = model_class.from_pretrained(source, local_files_only=not allow_download)
        model._jean_do_normalize = _do_normalize(transformers, source, local_files_only=not allow_download)
        return model
    except OSError as err:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        if allow_download:
            raise BackboneUnavailableError(
                f"speech backbone {source!r} could not be downloaded ({_first_line(err)}); check the name and the "
                "network, or pass a local directory"
            ) from err
        raise BackboneUnavailableError(
            f"speech backbone {source!r} is not in the Hugging Face cache ({cache}) and downloads are off; run "
            f"`hf download {source}` on a machine with internet, pass a local directory saved with save_pretrained, "
            "or add --frontend.allow-download"
        ) from err


def _do_normalize(transformers, source: str, local_files_only: bool) -> bool:
    """Whether the model's own feature extractor standardizes the waveform (True where it says nothing)."""
    try:
        extractor = transformers.AutoFeatureExtractor.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError):
        return True
    return bool(getattr(extractor, "do_normalize", True))


def _check_kind(kind: str, model_type: str, source: str) -> None:
    if model_type != kind:
        raise BackboneUnavailableError(f"{source}: is a {model_type!r} model, not {kind!r}; use --frontend.kind {model_type}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def backbone_facts(model: torch.nn.Module) -> BackboneFacts:
    """Stride, receptive field, width and depth of a loaded backbone, from its config."""
    config = model.config
    stride, receptive_field = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        receptive_field += (kernel - 1) * stride
        stride *= step
    return BackboneFacts(
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        stride=int(stride),
        receptive_field=int(receptive_field),
    )


@torch.no_grad()
def backbone_features(
    model: torch.nn.Module, waveform: Float[Tensor, "samples"], layer: int, chunk_seconds: float = 20.0
) -> Tuple[Float[Tensor, "frames channels"], int]:
    """Hidden state `layer` of the backbone, one frame per `stride` samples, frame k centred on sample k * stride.

    Returns the features (CPU, float32) and the index of the quietest frame (the padding value past the audio's ends).
    """
    facts = backbone_facts(model)
    device = next(model.parameters()).device
    wave = waveform.float().reshape(-1)
    # Zero-mean, unit-variance input where the model's own feature extractor does that (the usual configs).
    if getattr(model, "_jean_do_normalize", True) and wave.numel() > 1:
        wave = (wave - wave.mean()) / wave.std().clamp_min(1e-5)
    # A frame sees `receptive_field` samples starting at k * stride; pad half of that in front so frame k is centred on
    # sample k * stride (the convention of `frame_windows`), and as much at the end so the last sample is covered.
    half = facts.receptive_field // 2
    padded = torch.nn.functional.pad(wave, (half, facts.receptive_field - half))
    num_frames = (padded.numel() - facts.receptive_field) // facts.stride + 1
    chunk = max(1, int(chunk_seconds * AUDIO_SAMPLE_RATE) // facts.stride)  # output frames per chunk
    context = AUDIO_SAMPLE_RATE // facts.stride  # 1 s of frames on each side
    pieces = []
    for start in range(0, num_frames, chunk):
        stop = min(num_frames, start + chunk)
        first = max(0, start - context)
        last = min(num_frames, stop + context)
        segment = padded[first * facts.stride : (last - 1) * facts.stride + facts.receptive_field]
        out = model(segment[None].to(device), output_hidden_states=True)
        hidden = out.hidden_states[layer][0].float().cpu()
        pieces.append(hidden[start - first : start - first + (stop - start)])
    features = torch.cat(pieces, dim=0) if pieces else torch.zeros(0, facts.hidden_size)
    # The quietest frame by waveform energy (the backbone's channels have no energy meaning of their own).
    frame_energy = torch.nn.functional.avg_pool1d(
        padded[None, None] ** 2, kernel_size=facts.receptive_field, stride=facts.stride
    )[0, 0][: features.shape[0]]
    quiet = int(torch.argmin(frame_energy)) if frame_energy.numel() else 0
    return features, quiet
