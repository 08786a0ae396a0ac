"""Self-contained serving artefacts of a trained model: a ``torch.export`` program (.pt2) or ONNX.

The exported program maps int64 per-field indices ``x`` [B, N] (any batch size B >= 1) to click
probabilities [B]. It carries, as JSON metadata (``fastme.json`` in the .pt2's extra files, the
``fastme`` metadata property in ONNX): the model spec, the field cardinalities, each field's OOV
index, the bounds rule, and example inputs with the outputs the eager model gave for them.

Bounds (an index outside ``[0, field_dims[i])``):
- ``bounds="oov"`` (default): the index is replaced by its field's OOV index, as an unseen raw
  value is in training; the rule is part of the graph, so it holds in ONNX too;
- ``bounds="raise"`` (.pt2 only: ONNX has no assertion): the program raises a RuntimeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastme.models.spec import load_trained
from fastme.ops._validation import bounds_check
from fastme.train.trainer import resolve_device

FORMATS = ("pt2", "onnx")
BOUNDS = ("oov", "raise")
META_NAME = "fastme.json"
#: Sources whose caches lay every field out as [kept values..., OOV, missing].
_OOV_LAYOUT = ("criteo", "avazu", "parquet", "npy")
_EXAMPLE_ROWS = 4


class ServingModel(nn.Module):
    """int64 [B, N] per-field indices -> probabilities [B], with the bounds rule in the graph."""

    def __init__(self, model: nn.Module, oov_index, bounds: str = "oov"):
        super().__init__()
        if bounds not in BOUNDS:
            raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
        self.model = model
        self.bounds = bounds
        dims = torch.as_tensor(list(model.spec.field_dims), dtype=torch.int64)
        self.register_buffer("field_dims", dims.unsqueeze(0))
        self.register_buffer("oov_index", torch.as_tensor(oov_index, dtype=torch.int64)
                             .unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounds == "oov":
            x = torch.where((x < 0) | (x >= self.field_dims), self.oov_index, x)
        return torch.sigmoid(self.model(x))


def oov_indices(field_dims, source: dict) -> tuple[list[int], str]:
    """Each field's OOV index and where the rule comes from. Caches of raw data (and of Parquet/
    npy sources) put the OOV index just before the missing one (``dims - 2``); other data records
    none, so the last index stands in."""
    dims = [int(d) for d in field_dims]
    if source.get("dataset") in _OOV_LAYOUT and min(dims) >= 2:
        return [d - 2 for d in dims], f"the {source['dataset']} cache layout: dims - 2"
    return [d - 1 for d in dims], "no OOV index recorded for this data: the last index"


def example_inputs(field_dims, rows: int = _EXAMPLE_ROWS, seed: int = 0) -> torch.Tensor:
    """Deterministic in-range indices [rows, N]."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, int(d), (rows,), generator=g) for d in field_dims], 1)


def export(checkpoint, out, fmt: str = "pt2", *, bounds: str = "oov",
           backend: str = "reference", device: str = "cpu") -> dict:
    """Export the model of ``checkpoint`` to ``out`` (.pt2 or .onnx); returns the metadata.

    ``backend`` chooses the fused-op implementation traced into a .pt2 (a kernel backend's ops
    appear as ``fastme::`` custom ops, which ``import fastme`` registers when it is loaded); the
    default ``reference`` gives plain ATen ops that load without fastme. ONNX always traces the
    reference ops.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        if bounds == "raise":
            raise ValueError("ONNX has no assertion to raise with: export with bounds='oov' or "
                             "as pt2")
        if backend != "reference":
            raise ValueError("ONNX export traces the reference ops only (backend='reference')")
    device = resolve_device(device)
    model, ckpt = load_trained(checkpoint, backend=backend, device=device)
    spec = model.spec
    source = (ckpt.get("data") or {}).get("source") or {}
    oov, oov_rule = oov_indices(spec.field_dims, source)
    serving = ServingModel(model, oov, bounds).to(device).eval()
    x = example_inputs(spec.field_dims).to(device)
    with torch.no_grad():
        expected = serving(x)
    meta = {"format": fmt, "spec": spec.to_dict(), "field_dims": list(spec.field_dims),
            "field_names": list((ckpt.get("data") or {}).get("field_names") or []),
            "oov_index": oov, "oov_rule": oov_rule, "bounds": bounds, "backend": backend,
            "input": "x: int64 [B, N] per-field indices", "output": "click probability [B]",
            "example_input": x.cpu().tolist(), "example_output": expected.cpu().tolist(),
            "torch": torch.__version__}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    # 'oov' makes every index valid before the model sees it: its own check would be dead code.
    with bounds_check("off" if bounds == "oov" else "error"):
        if fmt == "pt2":
            program = torch.export.export(serving, (x,), dynamic_shapes=({0: batch},))
            torch.export.save(program, out, extra_files={META_NAME: json.dumps(meta)})
        else:
            _export_onnx(serving, x, batch, out, meta)
    return meta


def _export_onnx(serving, x, batch, out: Path, meta: dict) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install 'fastme[export]'") from exc
    program = torch.onnx.export(serving, (x,), dynamo=True, input_names=["x"],
                                output_names=["probability"], dynamic_shapes=({0: batch},),
                                verbose=False)
    program.save(str(out))
    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = "fastme", json.dumps(meta)
    onnx.save(graph, str(out))


def load_pt2(path):
    """(callable module, metadata) of a .pt2 written by :func:`export`."""
    extra = {META_NAME: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), json.loads(extra[META_NAME])


def check_roundtrip(path, atol: float = 1e-6) -> float:
    """Run the artefact at ``path`` on its own example inputs; returns the largest difference
    from the eager outputs it recorded (raises AssertionError beyond ``atol``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx
        import onnxruntime as ort

        meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["fastme"])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": np.asarray(meta["example_input"], dtype=np.int64)})[0]
    else:
        module, meta = load_pt2(path)
        with torch.no_grad():
            got = module(torch.tensor(meta["example_input"], dtype=torch.int64)).numpy()
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(meta["example_output"]))))
    if not diff <= atol:
        raise AssertionError(f"{path}: outputs differ from the eager model's by {diff:g}")
    return diff
