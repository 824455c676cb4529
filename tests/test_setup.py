"""scripts/patch_horovod.sh, with this machine's compiler: the headers it patches compile even
where the standard library no longer includes <string>, <cstdint> and <stdexcept> for them.
And bench/gpu_check.sh, which CI runs without a GPU: it must skip cleanly."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# A header as Horovod's were written: it uses the three without including them.
HEADER = """#ifndef FAKE_H
#define FAKE_H
inline std::string name() { return "horovod"; }
inline std::uint32_t count() { return 1u; }
inline void fail() { throw std::runtime_error("x"); }
#endif
"""


def fake_source(root: Path) -> Path:
    src = root / "horovod-0.28.1"
    for path, text in {
        "CMakeLists.txt": "set(CMAKE_CXX_STANDARD 14)\n",
        "horovod/torch/CMakeLists.txt": "set(CMAKE_CXX_STANDARD 14)\n",
        "horovod/common/ops/cuda/CMakeLists.txt": "set(CMAKE_CUDA_STANDARD 11)\n",
        "horovod/common/fake.h": HEADER,
        "third_party/gloo/gloo/fake_gloo.h": HEADER.replace("FAKE_H", "FAKE_GLOO_H"),
    }.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    return src


def compiles(src: Path, header: str) -> subprocess.CompletedProcess:
    unit = src / "unit.cc"
    unit.write_text(f'#include "{header}"\nint main() {{ return static_cast<int>(count()); }}\n')
    return subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", str(unit)], capture_output=True, text=True
    )


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_the_horovod_patch_adds_the_includes_and_the_standards(tmp_path: Path) -> None:
    src = fake_source(tmp_path)
    assert compiles(src, "horovod/common/fake.h").returncode != 0  # as Horovod ships it
    patch = ["bash", str(ROOT / "scripts" / "patch_horovod.sh"), str(src)]
    subprocess.run(patch, check=True, capture_output=True)
    for header in ("horovod/common/fake.h", "third_party/gloo/gloo/fake_gloo.h"):
        result = compiles(src, header)
        assert result.returncode == 0, result.stderr
    assert (src / "horovod/torch/CMakeLists.txt").read_text() == "set(CMAKE_CXX_STANDARD 17)\n"
    cuda = (src / "horovod/common/ops/cuda/CMakeLists.txt").read_text()
    assert cuda == "set(CMAKE_CUDA_STANDARD 17)\n"
    patched = (src / "horovod/common/fake.h").read_text()
    subprocess.run(patch, check=True, capture_output=True)  # a second run changes nothing
    assert (src / "horovod/common/fake.h").read_text() == patched


def test_the_gpu_check_skips_cleanly_without_a_gpu() -> None:
    """bench/gpu_check.sh (and the Python it runs) say they skipped and exit 0 on a machine
    without CUDA, as in CI; on a GPU machine run the check itself."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run bash bench/gpu_check.sh")
    env = {**os.environ, "LEPTON_PYTHON": sys.executable}
    for command in (["bash", "bench/gpu_check.sh"], [sys.executable, "bench/gpu_check.py"]):
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "gpu_check: skipped: " in result.stdout
        assert "no CUDA device" in result.stdout
