"""Named, cached, resumable processing stages.

A stage is a function from the dataset folder (and the results of the stages it depends on) to its outputs there.
Completion is recorded by a stamp, `DIR/.stages/<stage>.json`, written (atomically) only after every output of the
stage is in place. The stamp holds the stage's *key*: a hash of the settings that shape its outputs and of the run ids
of the stages it read from. So:

- a finished stage with the same key is skipped (its recorded result is reused);
- changed settings, a changed input video or a redone upstream stage change the key, and the stage runs again;
- a killed run leaves a `<stage>.started` marker and no stamp: the next run redoes that stage, keeping the per-frame
  files it already finished when the marker's key matches (every file is written to a temporary name and renamed, so
  a file under its final name is complete);
- before any stage runs, jean.json is marked `"complete": false`; the last stage sets it true, so a reader never takes
  a half-processed folder for a dataset.

Outputs are removed only when they are ours: a stage lists the files and per-frame name patterns it writes, and only
those are ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from jean_nerfstudio import constants as C
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.utils.atomic import write_json

# Temporary names of `jean_nerfstudio.utils.atomic.temp_path_for`: `.<stem>.tmp-<pid><suffix>`.
TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")


def run_bounded(pool, jobs: Iterable[Callable[[], None]], max_pending: int, on_done: Callable[[], None]) -> None:
    """Run `jobs` on a thread `pool` with at most `max_pending` in flight, calling `on_done` as each finishes (in
    submission order). The producer (frame decoding, the segmenter) runs on the calling thread as the iterable is
    consumed, so decoded frames cannot pile up in memory faster than the workers write them; a job's exception is
    raised here."""
    pending = []
    for job in jobs:
        pending.append(pool.submit(job))
        while len(pending) > max_pending:
            pending.pop(0).result()
            on_done()
    for future in pending:
        future.result()
        on_done()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(root: Path, folders: Sequence[str]) -> int:
    """Delete temporary files (`.name.tmp-PID.ext`) left by writers that no longer run: a killed run's half-written
    outputs. A live process's temporaries are left alone."""
    removed = 0
    for folder in folders:
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            match = TEMP_NAME.match(path.name)
            if match and path.is_file() and not _alive(int(match.group("pid"))):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


@dataclass(frozen=True)
class Outputs:
    """What a stage writes, relative to the dataset folder: whole files, and per-frame files in folders by pattern."""

    files: Tuple[str, ...] = ()
    """Files owned by the stage (e.g. "audio.wav", "features/mel.npy")."""
    patterns: Tuple[Tuple[str, str], ...] = ()
    """(folder, regex) pairs: per-frame files owned by the stage (e.g. ("images", r"\\d{6}\\.jpg"))."""
    optional: Tuple[str, ...] = ()
    """Files the stage writes only in some configurations (removed like the others, never required)."""

    def present(self, root: Path, num_frames: int) -> bool:
        """Whether a finished stage's outputs are still there (someone may have deleted them since)."""
        if not all((root / f).is_file() for f in self.files):
            return False
        for folder, pattern in self.patterns:
            regex = re.compile(f"^{pattern}$")
            directory = root / folder
            if not directory.is_dir() or sum(1 for p in directory.iterdir() if regex.match(p.name)) < num_frames:
                return False
        return True

    def existing(self, root: Path) -> List[Path]:
        found = [root / f for f in self.files + self.optional if (root / f).exists()]
        for folder, pattern in self.patterns:
            regex = re.compile(f"^{pattern}$")
            if (root / folder).is_dir():
                found += [p for p in (root / folder).iterdir() if regex.match(p.name)]
        return found

    def folders(self) -> List[str]:
        names = {str(Path(f).parent) for f in self.files + self.optional if str(Path(f).parent) != "."}
        return sorted(names | {folder for folder, _ in self.patterns})

    def remove(self, root: Path) -> int:
        """Delete our outputs and our stale temporary files; folders are removed only when left empty."""
        removed = 0
        for path in self.existing(root):
            path.unlink()
            removed += 1
        for folder in [".", *self.folders()]:
            directory = root / folder
            if directory.is_dir():
                for path in directory.iterdir():
                    if path.is_file() and TEMP_NAME.match(path.name):
                        path.unlink(missing_ok=True)
        for folder in self.folders():
            directory = root / folder
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return removed


@dataclass
class StageContext:
    """What a running stage sees: the folder, the settings, upstream results, progress and warnings."""

    root: Path
    config: Any
    results: Dict[str, Dict[str, Any]]
    resuming: bool
    """True when a killed run of this very stage (same key) left per-frame outputs that may be kept."""
    progress: "ProgressSink"
    warnings: List[str]
    work_dir: Path
    """`DIR/.stages/work/`: intermediate arrays that are not part of the contract."""

    def result(self, stage: str) -> Dict[str, Any]:
        return self.results[stage]

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress.warn(message)


class ProgressSink:
    """Receives progress; the CLI's implementation draws rich progress bars, the default one is silent."""

    def start(self, stage: str, total: Optional[float], unit: str = "frames") -> None:  # noqa: D401 - interface
        """A stage began; `total` units of work (None: unknown)."""

    def advance(self, stage: str, amount: float = 1.0) -> None:
        """`amount` more units are done."""

    def finish(self, stage: str, seconds: float, frames: int, skipped: bool) -> None:
        """A stage ended (or was skipped)."""

    def warn(self, message: str) -> None:
        """A warning (also recorded in jean.json)."""

    def note(self, message: str) -> None:
        """An informational line."""


@dataclass(frozen=True)
class Stage:
    """One named step of the pipeline."""

    name: str
    deps: Tuple[str, ...]
    run: Callable[[StageContext], Dict[str, Any]]
    """Writes the outputs (each atomically) and returns a JSON-able result for later stages and jean.json."""
    settings: Callable[[Any], Dict[str, Any]]
    """The settings that change this stage's outputs (part of its key)."""
    outputs: Outputs = field(default_factory=Outputs)


def _stable_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageStore:
    """Stamps and markers under `DIR/.stages/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / C.STAGES_DIR

    def stamp_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def marker_path(self, name: str) -> Path:
        return self.dir / f"{name}.started"

    def read_stamp(self, name: str) -> Optional[Dict[str, Any]]:
        path = self.stamp_path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: treated as not done

    def write_stamp(self, name: str, stamp: Dict[str, Any]) -> None:
        write_json(self.stamp_path(name), stamp)

    def read_marker(self, name: str) -> Optional[str]:
        path = self.marker_path(name)
        return path.read_text(encoding="utf-8").strip() if path.is_file() else None

    def write_marker(self, name: str, key: str) -> None:
        from jean_nerfstudio.utils.atomic import write_bytes

        write_bytes(self.marker_path(name), key.encode())

    def clear(self, name: str) -> None:
        self.stamp_path(name).unlink(missing_ok=True)
        self.marker_path(name).unlink(missing_ok=True)


class Pipeline:
    """Runs the selected stages in order, skipping finished ones, resuming killed ones."""

    def __init__(
        self,
        root: Path,
        config: Any,
        stages: Sequence[Stage],
        selected: Sequence[str],
        force: bool,
        progress: Optional[ProgressSink] = None,
        owned_names: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.config = config
        self.stages = list(stages)
        self.by_name = {s.name: s for s in self.stages}
        unknown = [s for s in selected if s not in self.by_name]
        if unknown:
            raise ProcessError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(self.by_name)}.")
        self.selected = set(selected)
        self.force = force
        self.progress = progress or ProgressSink()
        self.owned_names = tuple(owned_names)
        self.store = StageStore(self.root)
        self.warnings: List[str] = []
        self.results: Dict[str, Dict[str, Any]] = {}
        self.timings: Dict[str, Dict[str, Any]] = {}
        self._marked_incomplete = False

    # ----- folder safety ----------------------------------------------------------------------------------------------
    def prepare_folder(self) -> None:
        """Create the folder; refuse one that holds files named like ours that we did not write."""
        if self.root.exists() and not self.root.is_dir():
            raise ProcessError(f"{self.root}: exists and is not a folder; give a folder path to --output.")
        ours = (self.root / C.STAGES_DIR).is_dir()
        if not ours and self.root.is_dir():
            clashes = [name for name in self.owned_names if (self.root / name).exists()]
            if clashes:
                raise ProcessError(
                    f"{self.root}: already holds {', '.join(clashes)} that jean-process did not write; choose a new or "
                    "empty --output folder (nothing was changed)."
                )
        (self.root / C.STAGES_DIR / "work").mkdir(parents=True, exist_ok=True)
        folders = {".", C.STAGES_DIR, f"{C.STAGES_DIR}/work"}
        for stage in self.stages:
            folders.update(stage.outputs.folders())
        remove_dead_temporaries(self.root, sorted(folders))

    def mark_incomplete(self) -> None:
        """Before the first stage that changes anything: a reader must not take the folder for a finished dataset."""
        if self._marked_incomplete:
            return
        self._marked_incomplete = True
        meta_path = self.root / C.METADATA_FILE
        metadata: Dict[str, Any] = {}
        if meta_path.is_file():
            try:
                metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                metadata = {}
        if metadata.get("complete") is False and metadata.get("contract_version") == C.CONTRACT_VERSION:
            return
        metadata.update({"contract_version": C.CONTRACT_VERSION, "complete": False})
        write_json(meta_path, metadata)

    # ----- running ----------------------------------------------------------------------------------------------------
    def key_for(self, stage: Stage) -> str:
        upstream = {}
        for dep in stage.deps:
            stamp = self.store.read_stamp(dep)
            upstream[dep] = stamp.get("run_id") if stamp else None
        return _stable_hash({"stage": stage.name, "settings": stage.settings(self.config), "upstream": upstream})

    def run(self) -> Dict[str, Dict[str, Any]]:
        self.prepare_folder()
        for stage in self.stages:
            missing = [d for d in stage.deps if d not in self.results]
            stamp = self.store.read_stamp(stage.name)
            if stage.name not in self.selected:
                if (
                    not missing
                    and stamp is not None
                    and stamp.get("key") == self.key_for(stage)
                    and stage.outputs.present(self.root, int(stamp.get("frames", 0)))
                ):
                    self.results[stage.name] = stamp.get("result", {})
                continue
            if missing:
                raise ProcessError(
                    f"{self.root}: stage {stage.name!r} needs {', '.join(missing)} first (not done with these "
                    f"settings); add "
                    f"{' '.join(missing)} to --stages (or leave --stages out to run everything)."
                )
            key = self.key_for(stage)
            if (
                stamp is not None
                and stamp.get("key") == key
                and not self.force
                and stage.outputs.present(self.root, int(stamp.get("frames", 0)))
            ):
                self.results[stage.name] = stamp.get("result", {})
                self.warnings.extend(stamp.get("warnings", []))
                self.timings[stage.name] = {"seconds": 0.0, "frames": stamp.get("frames", 0), "skipped": True}
                self.progress.finish(stage.name, 0.0, int(stamp.get("frames", 0)), skipped=True)
                continue
            self._run_stage(stage, key)
        return self.results

    def _run_stage(self, stage: Stage, key: str) -> None:
        self.mark_incomplete()
        resuming = (not self.force) and self.store.read_marker(stage.name) == key
        self.store.clear(stage.name)
        if resuming:
            # Keep finished per-frame files; only stale temporaries go.
            Outputs(patterns=tuple((f, r"\..+\.tmp-\d+(\.[A-Za-z0-9]+)?") for f in stage.outputs.folders())).remove(
                self.root
            )
        else:
            stage.outputs.remove(self.root)
        self.store.write_marker(stage.name, key)
        context = StageContext(
            root=self.root,
            config=self.config,
            results=self.results,
            resuming=resuming,
            progress=self.progress,
            warnings=self.warnings,
            work_dir=self.root / C.STAGES_DIR / "work",
        )
        first_warning = len(self.warnings)
        started = time.perf_counter()
        result = stage.run(context) or {}
        seconds = time.perf_counter() - started
        frames = int(result.get("num_frames", self.results.get("media", {}).get("num_frames", 0)))
        stamp = {
            "stage": stage.name,
            "key": key,
            "run_id": uuid.uuid4().hex,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
            "frames": frames,
            "resumed": resuming,
            "warnings": self.warnings[first_warning:],
            "result": result,
        }
        self.store.write_stamp(stage.name, stamp)
        self.store.marker_path(stage.name).unlink(missing_ok=True)
        self.results[stage.name] = result
        self.timings[stage.name] = {"seconds": round(seconds, 3), "frames": frames, "skipped": False}
        self.progress.finish(stage.name, seconds, frames, skipped=False)
