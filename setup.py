"""Builds the optional compiled extension ``fastme._C`` through CMake.

The extension never links libtorch: kernels receive raw device pointers, sizes and a CUDA stream
from Python, so the same build works with any torch version and even with a CPU-only torch.
The CUDA kernels are compiled whenever ``nvcc`` is found; ``FASTME_CUDA=0/1`` forces it off/on
and ``FASTME_CUDA_ARCHS`` (CMake syntax, default ``80;90``) picks the targets.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _find_nvcc():
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _cuda_requested(nvcc):
    flag = os.environ.get("FASTME_CUDA", "").strip().lower()
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if nvcc is None:
            raise RuntimeError("FASTME_CUDA=1 but no nvcc was found (set CUDA_HOME or PATH)")
        return True
    return nvcc is not None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = _find_nvcc()
        use_cuda = _cuda_requested(nvcc)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DFASTME_CUDA={'ON' if use_cuda else 'OFF'}",
        ]
        if use_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            archs = os.environ.get("FASTME_CUDA_ARCHS", "80;90")
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        if shutil.which("ninja"):
            args.append("-GNinja")
        print(f"fastme: building extension (CUDA {'on' if use_cuda else 'off'})", flush=True)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("fastme._C")], cmdclass={"build_ext": CMakeBuild})
