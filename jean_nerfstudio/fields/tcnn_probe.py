"""Whether tinycudann can be trusted on this machine: a one-time self-check in a subprocess, cached on disk.

A native extension built against another CUDA runtime can crash (segmentation fault) on its first CUDA call, and a
crash cannot be caught in-process: it would end a training run with no way back. So before `implementation="auto"`
uses tinycudann, a child process constructs a tcnn grid encoding, runs forward and backward on a small batch and
compares outputs and gradients (table and positions) with the torch grid on the same weights. The verdict is cached
per tinycudann build, torch version, CUDA version and GPU name, so the check costs a few seconds once. The child runs
`fields/tcnn_selfcheck.py`.

    python -m jean_nerfstudio.fields.tcnn_probe            # re-run the check now (ignores and replaces the cache)
    python -m jean_nerfstudio.fields.tcnn_probe --show     # print the cached verdict for this machine
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

PROBE_TIMEOUT_SECONDS = 300
"""The child's time limit (CUDA context creation and a first kernel load can take tens of seconds)."""
RECHECK_COMMAND = "python -m jean_nerfstudio.fields.tcnn_probe"
"""What the fallback message tells users to run after fixing their tinycudann build."""


@dataclass(frozen=True)
class ProbeResult:
    """The self-check's verdict; `reason` is one line, for the user."""

    passed: bool
    reason: str
    cache_file: Optional[str] = None


def cache_dir() -> Path:
    """$JEAN_CACHE_DIR, else $XDG_CACHE_HOME/jean_nerfstudio, else ~/.cache/jean_nerfstudio."""
    if os.environ.get("JEAN_CACHE_DIR"):
        return Path(os.environ["JEAN_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jean_nerfstudio"


def tcnn_installed() -> bool:
    """Whether a `tinycudann` module can be found (without importing it: its import is part of what is checked)."""
    return importlib.util.find_spec("tinycudann") is not None


def _tcnn_build_id() -> str:
    """The installed distribution's version, or (a build on the path) its file and modification time."""
    try:
        return importlib.metadata.version("tinycudann")
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("tinycudann")
        origin = spec.origin if spec is not None and spec.origin else "missing"
        stamp = int(os.path.getmtime(origin)) if os.path.exists(origin) else 0
        return f"{origin}@{stamp}"


def probe_key(device: str) -> Dict[str, str]:
    """What a verdict depends on: the tcnn build, torch, CUDA and the GPU."""
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else "cpu"
    return {"tinycudann": _tcnn_build_id(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "device": name}


def cache_file(key: Dict[str, str]) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"tcnn_probe-{digest}.json"


def check_tcnn(device: str = "cuda", recheck: bool = False, timeout: float = PROBE_TIMEOUT_SECONDS) -> ProbeResult:
    """The cached verdict for this machine, running the child check first when there is none (or `recheck`)."""
    key = probe_key(device)
    path = cache_file(key)
    if not recheck and path.is_file():
        try:
            cached = json.loads(path.read_text())
            return ProbeResult(passed=bool(cached["passed"]), reason=str(cached["reason"]), cache_file=str(path))
        except (ValueError, KeyError):  # a truncated or foreign file: check again
            pass
    result = _run_child(device, timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # data-parallel ranks may probe at once: replace atomically
    tmp.write_text(json.dumps({**asdict(result), "key": key}, indent=2))
    os.replace(tmp, path)
    return ProbeResult(result.passed, result.reason, str(path))


def _run_child(device: str, timeout: float) -> ProbeResult:
    # The comparison itself lives in `tcnn_selfcheck` (it builds a HashGrid; this module is imported by the grid's
    # backend choice, so it must not import the grid).
    command = [sys.executable, "-m", "jean_nerfstudio.fields.tcnn_selfcheck", "--device", device]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"the check did not finish within {timeout:.0f} s")
    if run.returncode < 0:
        try:
            name = signal.Signals(-run.returncode).name
        except ValueError:
            name = f"signal {-run.returncode}"
        return ProbeResult(False, f"crashed with {name} (a build for another CUDA runtime or GPU?)")
    verdict = next((line for line in reversed(run.stdout.splitlines()) if line.startswith("{")), None)
    if verdict is not None:
        try:
            data = json.loads(verdict)
            return ProbeResult(bool(data["passed"]), str(data["reason"]))
        except (ValueError, KeyError):
            pass
    last = (run.stderr.strip().splitlines() or [f"exit code {run.returncode}"])[-1]
    return ProbeResult(False, f"failed (exit code {run.returncode}): {last[-200:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--show", action="store_true", help="print the cached verdict without re-checking")
    args = parser.parse_args()
    if not tcnn_installed():
        print("tinycudann is not installed; nothing to check.")
        return
    result = check_tcnn(args.device, recheck=not args.show)
    print(f"tinycudann {'passed' if result.passed else 'FAILED'} its self-check: {result.reason} "
          f"(cached in {result.cache_file})")


if __name__ == "__main__":
    main()
