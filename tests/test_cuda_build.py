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
    "cuda_device_count",
    "cuda_runtime_status",
    "cuda_synchronize",
    "lookup_forward",
    "scatter_rows_atomic",
    "scatter_rows_sorted",
    "fm_forward",
    "fm_backward",
    "fwfm_forward",
    "fwfm_backward",
    "fwfm_weight_grad_plan",
    "cross_forward",
    "cross_backward",
    "cross_weight_grad_plan",
    "SEGMENT_CHUNK",
    "FWFM_FIELD_PAD",
    "cuda_archs",
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
        "0",
        "off",
        "false",
        "no",
    )


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
        torch.ops.fastme.cuda_multi_embedding_lookup(
            torch.randn(4, 1, 2),
            torch.zeros(3, 1, dtype=torch.long),
            torch.zeros(1, dtype=torch.long),
        )


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
    args = [
        cmake,
        str(ROOT),
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11_dir}",
        "-DCMAKE_BUILD_TYPE=Debug",
        "-DFASTME_CUDA=OFF",
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={tmp_path / 'out'}",
    ]
    if ninja:
        args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    # No compiler cache or CUDA on PATH needed: the configure must not even look for nvcc.
    env = dict(os.environ, CUDACXX="/nonexistent/nvcc")
    subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, env=env)
    subprocess.run(
        [cmake, "--build", ".", "--parallel", "2"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env=env,
    )
    code = "import _C; assert _C.built_with_cuda is False; assert not hasattr(_C, 'lookup_forward')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "out", check=True)


def _cuda_only_build():
    """The extension with CUDA kernels on a machine where none can run (then a call converts its
    arguments and fails in the CUDA runtime, launching nothing)."""
    ext = _extension.load()
    if not ext.built_with_cuda or ext.cuda_device_count() > 0:
        pytest.skip("needs a CUDA build on a machine without a usable GPU")
    return ext


def _kind(text: str) -> str:
    """What Python passes for one parameter: "int", "bool" or "tuple<n>", from a C++ parameter
    type or a pybind11 annotation."""
    text = text.strip()
    if text.startswith("tuple["):
        depth, commas = 0, 0
        for ch in text[len("tuple[") : -1]:
            depth += ch == "["
            depth -= ch == "]"
            commas += ch == "," and depth == 0
        return f"tuple{commas + 1}"
    structs = {"Launch": 2, "IndexArgs": 7, "ChunkPlan": 2, "SplitPlan": 2}
    for type_name, fields in structs.items():
        if re.search(rf"\b{type_name}\b", text):
            return f"tuple{fields}"
    return "bool" if re.fullmatch(r"(const )?bool( \w+)?", text) else "int"


def _split_top(text: str) -> list:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]] if text.strip() else parts


def _bound_signature(fn) -> list:
    """[(name, kind)] of a pybind11 function, from the first line of its __doc__."""
    params = re.match(r"\w+\((.*)\) ->", fn.__doc__.strip().splitlines()[0]).group(1)
    return [(p.split(":", 1)[0].strip(), _kind(p.split(":", 1)[1])) for p in _split_top(params)]


def _declared_signatures() -> dict:
    """{entry point: [(name, kind)]} of every host entry point the kernel headers declare."""
    found = {}
    for header in sorted((ROOT / "kernels").glob("*.h")):
        text = re.sub(r"//[^\n]*", "", header.read_text())
        for name, params in re.findall(r"^\w+\s+(\w+)\(([^;{]*)\);", text, re.MULTILINE):
            found[name] = [
                (p.split()[-1].lstrip("*&"), _kind(p.rsplit(None, 1)[0]))
                for p in params.replace("\n", " ").split(",")
            ]
    return found


def test_every_binding_matches_its_cpp_declaration():
    ext = _extension.load()
    if not ext.built_with_cuda:
        pytest.skip("extension built without CUDA (no nvcc at build time)")
    declared = _declared_signatures()
    assert len(declared) >= 11, declared.keys()
    for name, params in declared.items():
        assert hasattr(ext, name), f"{name} is declared in kernels/*.h but not bound"
        assert _bound_signature(getattr(ext, name)) == params, name


def test_the_python_wrappers_call_every_binding_with_its_signature(monkeypatch):
    """Each host function of fastme/ops/cuda calls the real bindings: pybind11 converts every
    argument (a wrong name, count or kind is a TypeError) and the call then fails in the CUDA
    runtime, which has no device here."""
    ext = _cuda_only_build()
    from fastme.ops.cuda import _lib, cross, lookup, pooling

    called = set()

    def cpu_ok(value):  # CPU tensors have no device index: any device number converts alike
        return (
            0 if value is None else tuple(map(cpu_ok, value)) if isinstance(value, tuple) else value
        )

    class Checked:
        def __getattr__(self, name):
            fn = getattr(ext, name)
            if not callable(fn):
                return fn

            def call(**kwargs):
                called.add(name)
                try:
                    fn(**{k: cpu_ok(v) for k, v in kwargs.items()})
                except RuntimeError as exc:
                    assert "fastme CUDA error" in str(exc), exc
                    return (
                        (1, 32) if fn.__doc__.split("->")[1].strip().startswith("tuple") else None
                    )
                raise AssertionError(f"{name} ran without a CUDA device")

            return call

    for module in (_lib, cross, lookup, pooling):
        monkeypatch.setattr(module, "require_cuda_kernels", Checked)
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device=None: type("Stream", (), {"cuda_stream": 0})
    )
    table = torch.randn(6, 2, 3)
    indices = torch.tensor([[0, 1], [2, 1]])
    offsets = torch.tensor([0, 3])
    weights = torch.randn(2, 2, 2)
    for dtype in (torch.float32, torch.bfloat16):  # atomic and sorted table gradients
        t = table.to(dtype)
        emb = lookup.lookup_forward(t, indices, offsets)
        _lib.scatter_rows(emb, indices, offsets, 6)
        pooled = pooling.fm_forward(t, indices, offsets)
        pooling.fm_backward(pooled, t, indices, offsets)
        pooling.fwfm_forward(t, indices, offsets, weights.to(dtype))
        pooling.fwfm_backward(pooled, t, indices, offsets, weights.to(dtype))
    x0, weight, bias = torch.randn(4, 2, 3), torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3)
    for save in (False, True):
        out, states = cross.cross_forward(x0, weight, bias, save)
    cross.cross_backward(out, x0, weight, bias, states)
    assert called == set(_declared_signatures())
