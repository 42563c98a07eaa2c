"""Backend choice and the tinycudann self-check, on a CPU, with a stand-in `tinycudann`.

The stand-in is a test double of a third-party failure: a pure-Python `tinycudann` module, written by the test into a
temporary folder on the path, whose `Encoding` segfaults (what a build for another CUDA runtime did on an H200), or
computes wrong values, or computes the right ones (it borrows the torch grid). The self-check runs it in a child
process, as it would run the real extension.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from jean_nerfstudio.fields import grid_backends, tcnn_probe, triton_grid

REPO_ROOT = Path(__file__).resolve().parents[1]

STAND_IN = '''"""A stand-in for tinycudann's torch bindings (test double; behaviour from JEAN_TEST_TCNN_MODE)."""
import ctypes
import os

import torch

MODE = os.environ.get("JEAN_TEST_TCNN_MODE", "segfault")


class Encoding(torch.nn.Module):
    def __init__(self, n_input_dims, encoding_config, dtype=torch.float16):
        super().__init__()
        if MODE == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native extension's first CUDA call can
        if MODE == "abort":
            os.abort()
        from jean_nerfstudio.fields.hash_grid import HashGrid

        c = encoding_config
        top = round(c["base_resolution"] * c["per_level_scale"] ** (c["n_levels"] - 1))
        self.reference = HashGrid(num_dims=n_input_dims, num_levels=c["n_levels"],
                                  features_per_level=c["n_features_per_level"],
                                  log2_hashmap_size=c["log2_hashmap_size"], base_resolution=c["base_resolution"],
                                  max_resolution=top, implementation="torch")
        self.params = torch.nn.Parameter(torch.zeros_like(self.reference.params))
        self.dtype = dtype

    def forward(self, x):
        self.reference.params = self.params
        out = self.reference.torch_forward(x)
        return (out * 1.5 if MODE == "wrong" else out).to(self.dtype)
'''


@pytest.fixture
def stand_in_tcnn(tmp_path, monkeypatch):
    """Put the stand-in `tinycudann` on the path of this process and of its children; a private verdict cache."""
    folder = tmp_path / "site"
    (folder / "tinycudann").mkdir(parents=True)
    (folder / "tinycudann" / "__init__.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(folder))
    pythonpath = [str(folder), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in pythonpath if p))
    monkeypatch.setenv("JEAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(grid_backends, "_decisions", {})
    return folder


def test_cpu_runs_the_torch_grid_whatever_is_asked():
    if triton_grid.INTERPRETED:
        pytest.skip("under TRITON_INTERPRET the triton choice runs on the CPU by design")
    assert grid_backends.choose_implementation("auto", "cpu") == ("torch", None)
    assert grid_backends.choose_implementation("torch", "cpu") == ("torch", None)
    for asked in ("tcnn", "triton"):
        choice, note = grid_backends.choose_implementation(asked, "cpu")
        assert choice == "torch" and "needs CUDA" in note
    with pytest.raises(ValueError, match="unknown hash grid implementation"):
        grid_backends.choose_implementation("cuda", "cpu")  # type: ignore[arg-type]


def test_a_crashing_tcnn_is_caught_in_the_subprocess_and_cached(stand_in_tcnn, monkeypatch):
    monkeypatch.setenv("JEAN_TEST_TCNN_MODE", "segfault")
    result = tcnn_probe.check_tcnn("cpu")
    assert not result.passed and "SIGSEGV" in result.reason
    assert Path(result.cache_file).is_file()

    # The verdict is reused: no second child process.
    def no_child(*args, **kwargs):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(tcnn_probe, "_run_child", no_child)
    assert tcnn_probe.check_tcnn("cpu") == result


def test_a_wrong_tcnn_fails_the_comparison_and_a_right_one_passes(stand_in_tcnn, monkeypatch):
    monkeypatch.setenv("JEAN_TEST_TCNN_MODE", "wrong")
    wrong = tcnn_probe.check_tcnn("cpu", recheck=True)
    assert not wrong.passed and "mismatch" in wrong.reason
    monkeypatch.setenv("JEAN_TEST_TCNN_MODE", "right")
    right = tcnn_probe.check_tcnn("cpu", recheck=True)  # a re-check replaces the cached verdict
    assert right.passed, right.reason
    assert tcnn_probe.check_tcnn("cpu").passed


@pytest.mark.parametrize("triton_on_cuda,expected", [(True, "triton"), (False, "torch")])
def test_auto_on_cuda_falls_back_after_a_crash_with_one_line(stand_in_tcnn, monkeypatch, capsys, triton_on_cuda,
                                                             expected):
    """`auto` on a CUDA machine whose tinycudann crashes: Triton (else torch), and one line that says why and how to
    re-check. (CUDA is simulated: the check itself runs the crashing stand-in on the CPU.)"""
    monkeypatch.setenv("JEAN_TEST_TCNN_MODE", "abort")
    real_check = tcnn_probe.check_tcnn
    monkeypatch.setattr(tcnn_probe, "check_tcnn", lambda device="cuda", **kw: real_check("cpu", **kw))
    monkeypatch.setattr(triton_grid, "runs_on", lambda device: triton_on_cuda and torch.device(device).type == "cuda")
    for _ in range(3):  # every grid of a model asks; the decision and its line come once
        assert grid_backends.resolve_implementation("auto", "cuda") == expected
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "SIGABRT" in lines[0] and f"using the {expected} hash grid" in lines[0]
    assert tcnn_probe.RECHECK_COMMAND in lines[0] and "tcnn_probe-" in lines[0]


def test_a_passing_tcnn_is_chosen_by_auto_on_cuda(stand_in_tcnn, monkeypatch):
    monkeypatch.setenv("JEAN_TEST_TCNN_MODE", "right")
    real_check = tcnn_probe.check_tcnn
    monkeypatch.setattr(tcnn_probe, "check_tcnn", lambda device="cuda", **kw: real_check("cpu", **kw))
    assert grid_backends.choose_implementation("auto", "cuda") == ("tcnn", None)

