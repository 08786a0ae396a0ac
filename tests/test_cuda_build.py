"""The compiled extension: built, importable, exposing the CUDA entry points, on any machine.

No GPU needed: these checks run in CI, where the CUDA kernels are compiled and linked for every
target architecture (sm_80 and sm_90 by default) but never launched.
"""

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastme.ops as ops
from fastme import _extension
from fastme.ops import BackendUnavailable

ROOT = Path(__file__).resolve().parents[1]

ENTRY_POINTS = [
    "cuda_device_count", "cuda_runtime_status", "cuda_synchronize", "lookup_forward",
    "scatter_rows_atomic", "scatter_rows_sorted", "fm_forward", "fm_backward", "fwfm_forward",
    "fwfm_backward", "fwfm_weight_grad_plan", "cross_forward", "cross_backward",
    "cross_weight_grad_plan", "SEGMENT_CHUNK", "FWFM_FIELD_PAD", "cuda_archs",
]


def _nvcc():
    """nvcc the way setup.py finds it (None when absent)."""
    found = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if not found and home and (Path(home) / "bin" / "nvcc").exists():
            found = str(Path(home) / "bin" / "nvcc")
    return found


def _cuda_expected() -> bool:
    return _nvcc() is not None and os.environ.get("FASTME_CUDA", "").lower() not in (
        "0", "off", "false", "no")


def test_extension_imports_and_reports_cuda():
    ext = _extension.load()
    assert isinstance(ext.built_with_cuda, bool)
    if _cuda_expected():
        assert ext.built_with_cuda, "nvcc is available but the extension was built without CUDA"


def test_cuda_entry_points_exist():
    ext = _extension.load()
    if not ext.built_with_cuda:
        pytest.skip("extension built without CUDA (no nvcc at build time)")
    missing = [name for name in ENTRY_POINTS if not hasattr(ext, name)]
    assert not missing, f"missing from fastme._C: {missing}"
    assert isinstance(ext.cuda_device_count(), int)
    # Without a usable device the runtime says why; with one, nothing.
    assert (ext.cuda_device_count() > 0) == (ext.cuda_runtime_status() == "")


def _embedded_cuda_archs(path: Path) -> set:
    """SM versions of the device code (cubins) embedded in a shared library.

    Each cubin is an ELF image with e_machine EM_CUDA (190); its e_flags carry the SM version
    in bits 8..15 in the ELF ABI of recent toolkits (OS ABI byte 0x41), in bits 0..7 before.
    """
    data = path.read_bytes()
    archs = set()
    for match in re.finditer(rb"\x7fELF\x02", data):
        at = match.start()
        if at + 64 > len(data) or struct.unpack_from("<H", data, at + 18)[0] != 190:
            continue
        flags = struct.unpack_from("<I", data, at + 48)[0]
        archs.add((flags >> 8) & 0xFF if data[at + 7] == 0x41 else flags & 0xFF)
    return archs


def test_kernels_compiled_for_every_requested_architecture():
    ext = _extension.load()
    if not ext.built_with_cuda:
        pytest.skip("extension built without CUDA (no nvcc at build time)")
    requested = {int(re.match(r"\d+", a).group()) for a in ext.cuda_archs.split(",") if a}
    if "FASTME_CUDA_ARCHS" not in os.environ:
        assert requested == {80, 90}, f"default targets are sm_80 and sm_90, got {ext.cuda_archs}"
    embedded = _embedded_cuda_archs(Path(ext.__file__))
    assert requested <= embedded, f"requested {requested}, device code found for {embedded}"


def test_cuda_backend_on_cpu_tensors_raises_clearly():
    table = torch.randn(10, 2, 3)
    indices = torch.randint(0, 4, (5, 2))
    offsets = torch.tensor([0, 4])
    with pytest.raises(BackendUnavailable, match="backend='cuda' needs CUDA tensors"):
        ops.multi_embedding_lookup(table, indices, offsets, backend="cuda")
    with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
        ops.pooled_lookup(table, indices, offsets, backend="cuda")
    x0 = torch.randn(5, 2, 6)
    with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
        ops.cross_network(x0, torch.randn(1, 2, 6, 6), torch.randn(1, 2, 6), backend="cuda")
    assert "cuda" not in ops.available_backends("cpu")


def test_cuda_package_imports_and_registers_without_a_gpu():
    import fastme.ops.cuda  # noqa: F401  (must import on any machine)
    from fastme.ops import _backend

    for op in ("multi_embedding_lookup", "pooled_lookup", "cross_network", "lookup_cross_network"):
        assert (op, "cuda") in _backend._IMPLEMENTATIONS
    # The custom ops have no CPU kernel: calling one directly on CPU tensors fails loudly.
    with pytest.raises(NotImplementedError, match="cuda_multi_embedding_lookup"):
        torch.ops.fastme.cuda_multi_embedding_lookup(torch.randn(4, 1, 2),
                                                     torch.zeros(3, 1, dtype=torch.long),
                                                     torch.zeros(1, dtype=torch.long))


def test_availability_check_traces_under_torch_compile():
    """The public ops run this check; Dynamo cannot call into the extension, so it must be a
    trace-time constant for torch.compile(fullgraph=True) to work on the cuda backend."""

    def f(x):
        return x * 2 if _extension.cuda_kernels_available() else x * 3

    expected = 2 if _extension.cuda_kernels_available() else 3
    out = torch.compile(f, backend="eager", fullgraph=True)(torch.ones(2))
    assert torch.equal(out, torch.full((2,), float(expected)))


def test_missing_device_error_is_clear():
    ext = _extension.load()
    if not ext.built_with_cuda or ext.cuda_device_count() > 0:
        pytest.skip("needs a CUDA build on a machine without a usable GPU")
    with pytest.raises(_extension.ExtensionUnavailable, match="needs a CUDA device"):
        _extension.require_cuda_kernels()


def _build_tools():
    try:
        import pybind11
    except ImportError:
        return None
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    bin_dir = Path(sys.executable).parent
    cmake = cmake or (str(bin_dir / "cmake") if (bin_dir / "cmake").exists() else None)
    ninja = ninja or (str(bin_dir / "ninja") if (bin_dir / "ninja").exists() else None)
    if cmake is None:
        return None
    return cmake, ninja, pybind11.get_cmake_dir()


def test_build_without_cuda(tmp_path):
    """FASTME_CUDA=OFF (what setup.py passes without nvcc): the host-only module builds, imports,
    and says it has no CUDA kernels."""
    tools = _build_tools()
    if tools is None:
        pytest.skip("cmake and pybind11 are not installed in this environment (build-time only)")
    cmake, ninja, pybind11_dir = tools
    args = [cmake, str(ROOT), f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11_dir}", "-DCMAKE_BUILD_TYPE=Debug", "-DFASTME_CUDA=OFF",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={tmp_path / 'out'}"]
    if ninja:
        args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    # No compiler cache or CUDA on PATH needed: the configure must not even look for nvcc.
    env = dict(os.environ, CUDACXX="/nonexistent/nvcc")
    subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, env=env)
    subprocess.run([cmake, "--build", ".", "--parallel", "2"], cwd=tmp_path, check=True,
                   capture_output=True, env=env)
    code = "import _C; assert _C.built_with_cuda is False; assert not hasattr(_C, 'lookup_forward')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "out", check=True)
