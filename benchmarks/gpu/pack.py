"""Pack what the one-call GPU benchmark needs into a git-ignored folder that travels with the repository.

The GPU machine has Python 3.12 and torch + CUDA (with Triton), but no internet and no nerfstudio. This step, run on
a machine with PyPI access, gathers:
  wheels/   cp312 manylinux wheels of the packages that machine lacks (installed there with --no-deps)
  data/     one processed clip (the files the model reads, nothing else)
and checks that the total stays under the transfer limit. Nothing else travels: the Triton grid needs no build, and
tinycudann is benchmarked only where the machine already has it.

    python benchmarks/gpu/pack.py --dataset data/obama_2 --dest .gpu_carry
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

from jean_nerfstudio import constants as C

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# Packages missing from the GPU image that `jean_nerfstudio` + nerfstudio's pipeline modules import, at the versions
# this repository is tested with. (nerfstudio is installed without its heavy optional stack: open3d, wandb, ...)
WHEELS = [
    "nerfstudio==1.1.5",
    "nerfacc==0.5.2",
    "tyro==1.0.17",
    "docstring-parser==0.18.0",
    "typeguard==4.6.1",
    "viser==0.2.7",
    "msgspec==0.22.0",
    "websockets==17.4",
    "nodeenv==1.12.0",
    "plyfile==1.1.5",
    "trimesh==5.2.0",
    "yourdfpy==0.0.60",
    "appdirs==1.4.4",
    "rawpy==0.28.0",
    "pyquaternion==0.9.9",
    "splines==0.3.0",
    "pytorch-msssim==1.0.0",
    "gsplat==1.4.0",
    "tensorly==0.10.0",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# The dataset files the model reads (see docs/dataset_contract.md): every contract feature, since the dataparser
# checks that the dataset is whole before training. Stage stamps and caches stay behind.
DATASET_ITEMS = ["jean.json", "transforms.json", "background.png", "audio.wav", "images", "segmentation",
                 *(f"features/{name}" for name in C.FEATURE_FILES.values())]
LIMIT_BYTES = 64 * 2**20


def download_wheels(dest: Path, specs: List[str], python_version: str = "3.12") -> None:
    dest.mkdir(parents=True, exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", *platform_args, "-d", str(dest), *specs]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise SystemExit(f"pack: pip download failed: {' '.join(message[-3:])}")


def copy_items(source: Path, dest: Path, items: List[str], required: bool) -> None:
    for item in items:
        src = source / item
        if not src.exists():
            if required:
                raise SystemExit(f"pack: {src} is missing; is {source} a finished jean dataset?")
            continue
        target = dest / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a processed clip (jean-process output)")
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu_carry")
    parser.add_argument("--skip-wheels", action="store_true")
    args = parser.parse_args()

    if args.dest.exists():
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    if not args.skip_wheels:
        download_wheels(args.dest / "wheels", WHEELS)
    if args.dataset is not None:
        from jean_nerfstudio.contract import ProcessedClip

        clip = ProcessedClip.open(args.dataset)
        copy_items(clip.root, args.dest / "data" / "clip", DATASET_ITEMS, required=True)
    sizes = {p.name: folder_bytes(p) for p in args.dest.iterdir() if p.is_dir()}
    total = sum(sizes.values())
    for name, size in sizes.items():
        print(f"{name:8s} {size / 2**20:7.1f} MiB")
    print(f"total    {total / 2**20:7.1f} MiB (limit {LIMIT_BYTES / 2**20:.0f} MiB)")
    if total > LIMIT_BYTES:
        raise SystemExit("pack: over the transfer limit; use a shorter or smaller clip")


if __name__ == "__main__":
    main()
