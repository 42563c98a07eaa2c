"""Reading a `jean-export` folder (written by `jean_nerfstudio.export`; layout in docs/export.md): find it beside a
config.yml, check its manifest, and point its relative config paths at the folder.

`render.loading` uses it for jean-render, jean-eval and the export's own verification load; it holds no writing code,
so the loader and the exporter both import it and never each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from jean_nerfstudio.render.errors import RenderInputError

EXPORT_FORMAT = "jean-export"
EXPORT_VERSION = 1
"""Bumped when the folder's layout changes meaning; readers refuse other versions in one line."""
MANIFEST_FILE = "jean_export.json"
"""The manifest beside an export's config.yml: what marks a folder as an export."""
CONFIG_FILE = "config.yml"
DATASET_DIR = "dataset"
ENCODERS_DIR = "encoders"


def export_root_of(config_path: Path) -> Optional[Path]:
    """The export folder when `config_path` is an export's config.yml (its manifest beside it), else None."""
    folder = Path(config_path).parent
    return folder if (folder / MANIFEST_FILE).is_file() else None


def read_manifest(root: Path) -> Dict[str, Any]:
    """The manifest of the export at `root`, checked: this format and version, every listed file there and whole
    (by size). One-line `RenderInputError` naming the first problem and the fix otherwise."""
    path = root / MANIFEST_FILE
    again = "export the run again with `jean-export`, or copy the whole export folder again"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RenderInputError(f"{path}: unreadable ({type(err).__name__}); {again}.") from err
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise RenderInputError(f"{path}: not a jean-export manifest; {again}.")
    if manifest.get("format_version") != EXPORT_VERSION:
        raise RenderInputError(
            f"{path}: export format version {manifest.get('format_version')}, this jean_nerfstudio reads version "
            f"{EXPORT_VERSION}; export the run again with this version's `jean-export`."
        )
    bad: List[str] = []
    for name, size in dict(manifest.get("files", {})).items():
        file = root / name
        if not file.is_file() or file.stat().st_size != int(size):
            bad.append(name)
    if bad:
        raise RenderInputError(
            f"{root}: the export is incomplete, {len(bad)} file(s) missing or cut short ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); {again}."
        )
    return manifest


def localize(config: Any, root: Path) -> Any:
    """Point an export's relative config paths (run folder, dataset, encoder checkpoints) at `root`, in place."""
    config.output_dir = root / config.output_dir
    datamanager = config.pipeline.datamanager
    for holder in (config, datamanager, datamanager.dataparser):
        if getattr(holder, "data", None) is not None and not Path(holder.data).is_absolute():
            holder.data = root / holder.data
    model = config.pipeline.model
    for field_name in ("audio_encoder_checkpoint", "expression_encoder_checkpoint"):
        value = getattr(model, field_name, None)
        if value is not None and str(value).strip().lower() not in ("none", "", "shipped"):
            if not Path(value).is_absolute():
                setattr(model, field_name, root / value)
    return config
