"""Self-contained serving artefacts of a trained model: a ``torch.export`` program (.pt2) or ONNX.

The exported program maps int64 per-field indices ``x`` [B, N] (any batch size B >= 1) to click
probabilities [B]. It carries, as JSON metadata (``fastme.json`` in the .pt2's extra files, the
``fastme`` metadata property in ONNX): the model spec, the field cardinalities, each field's OOV
index, the bounds rule, example inputs with the outputs the eager model gave for them, and
``encoding``: for a model trained on raw Criteo or Avazu files, the name and SHA-256 of the
sidecar ``<out>.encoding.json`` that turns a raw row into those indices as training did (read by
:mod:`fastme.serve.raw_scoring`, which needs neither fastme nor torch); for other data, why there
is none.

The format follows the file name (``.pt2`` / ``.onnx``). The program (and sidecar) are written
beside the target and checked against the eager model before they are put in place, so a failed
export leaves no file and never damages one that was there.

Bounds (an index outside ``[0, field_dims[i])``):
- ``bounds="oov"`` (default): the index is replaced by its field's OOV index, as an unseen raw
  value is in training; the rule is part of the graph, so it holds in ONNX too;
- ``bounds="raise"`` (.pt2 only: ONNX has no assertion): the program raises a RuntimeError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastme._atomic import replace_on_success
from fastme.data.dataset import training_vocab
from fastme.data.formats import FORMATS as DATA_FORMATS
from fastme.ops import bounds_check
from fastme.train.checkpoint import load_trained
from fastme.train.precision import autocast, check_precision, store_tables
from fastme.train.trainer import resolve_device

FORMATS = ("pt2", "onnx")
BOUNDS = ("oov", "raise")
META_NAME = "fastme.json"
_EXAMPLE_ROWS = 4
ENCODING_SUFFIX = ".encoding.json"
#: Criteo integer cells the sidecar calls integers: decimal or 0x-hex, short enough never to
#: overflow, as fastme.data.text takes them (its pattern also lets "-0x..." through, which its
#: int64 parser then refuses: no cell of that form ever reached a model).
INTEGER_PATTERN = r"^(-?[0-9]{1,18}|0[xX][0-9a-fA-F]{1,15})$"
INSTALL_HINT = "pip install -e '.[export]' in a fastme checkout"


class ServingModel(nn.Module):
    """int64 [B, N] per-field indices -> probabilities [B], with the bounds rule in the graph.
    With ``precision="bf16"`` the model runs under bfloat16 autocast inside the forward, so that
    ``torch.export`` records the autocast region (an autocast around the export call would not
    be traced: the program would compute in float32)."""

    def __init__(self, model: nn.Module, oov_index, bounds: str = "oov", precision: str = "fp32"):
        super().__init__()
        if bounds not in BOUNDS:
            raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
        self.model = model
        self.bounds = bounds
        self.precision = check_precision(precision)
        dims = torch.as_tensor(list(model.spec.field_dims), dtype=torch.int64)
        self.register_buffer("field_dims", dims.unsqueeze(0))
        self.register_buffer(
            "oov_index", torch.as_tensor(oov_index, dtype=torch.int64).unsqueeze(0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounds == "oov":
            x = torch.where((x < 0) | (x >= self.field_dims), self.oov_index, x)
        with autocast(self.precision, x.device):
            z = self.model(x)
        return torch.sigmoid(z.float())


def oov_indices(field_dims, source: dict) -> tuple[list[int], str]:
    """Each field's OOV index and where the rule comes from. Caches of raw data (and of Parquet/
    npy sources) put the OOV index just before the missing one (``dims - 2``); other data records
    none, so the last index stands in (each format says which: its OOV_LAYOUT)."""
    dims = [int(d) for d in field_dims]
    fmt = DATA_FORMATS.get(source.get("dataset"))
    if fmt is not None and fmt.OOV_LAYOUT and min(dims) >= 2:
        return [d - 2 for d in dims], f"the {source['dataset']} cache layout: dims - 2"
    return [d - 1 for d in dims], "no OOV index recorded for this data: the last index"


def example_inputs(field_dims, rows: int = _EXAMPLE_ROWS, seed: int = 0) -> torch.Tensor:
    """Deterministic in-range indices [rows, N]."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, int(d), (rows,), generator=g) for d in field_dims], 1)


def export_format(out, fmt: str | None = None) -> str:
    """The format of the output file ``out``: its extension (.pt2 or .onnx); ``fmt``, when given,
    must agree (a .pt2 archive named .onnx is of no use to anyone)."""
    suffix = Path(out).suffix
    if suffix[1:] not in FORMATS:
        raise ValueError(
            f"the output file {str(out)!r} must end in .pt2 or .onnx (the format "
            f"follows it), not {suffix or 'no extension'}"
        )
    if fmt is not None and fmt != suffix[1:]:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        raise ValueError(
            f"format {fmt} does not match the output file {str(out)!r}: name it "
            f"*.{fmt}, or leave the format out"
        )
    return suffix[1:]


def export(
    checkpoint,
    out,
    fmt: str | None = None,
    *,
    bounds: str = "oov",
    backend: str = "reference",
    device: str = "cpu",
    vocab_dir=None,
    precision: str = "fp32",
    table_dtype: str = "fp32",
) -> dict:
    """Export the model of ``checkpoint`` to ``out`` (.pt2 or .onnx, which gives the format;
    ``fmt`` may name it too) and check it; returns the metadata it carries, plus
    ``checked_max_difference`` (its outputs against the eager model's on the example inputs).

    ``backend`` chooses the fused-op implementation traced into a .pt2 (a kernel backend's ops
    appear as ``fastme::`` custom ops, which ``import fastme`` registers when it is loaded); the
    default ``reference`` gives plain ATen ops that load without fastme. ONNX always traces the
    reference ops. A model trained on raw Criteo/Avazu files also gets the encoding sidecar
    ``<out>.encoding.json``, built from the training cache's vocab.json (``vocab_dir`` overrides
    where the checkpoint says that cache is). ``precision`` "bf16" exports the model computing
    under bfloat16 autocast (.pt2 only: ONNX Runtime's CPU provider has no bfloat16 Gemm);
    with it, ``table_dtype`` "bf16" stores the embedding tables in the program in bfloat16 (half
    the file and the memory; fastme/train/precision.py:store_tables).
    """
    fmt = export_format(out, fmt)
    check_precision(precision)
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
    if fmt == "onnx":
        if bounds == "raise":
            raise ValueError(
                "ONNX has no assertion to raise with: export with bounds='oov' or as pt2"
            )
        if backend != "reference":
            raise ValueError("ONNX export traces the reference ops only (backend='reference')")
        if precision != "fp32":
            raise ValueError(
                f"ONNX export computes in fp32 only (ONNX Runtime's CPU provider has no "
                f"bfloat16 Gemm): export --precision {precision} as .pt2, or use fp32"
            )
        _onnx_modules()  # before any work
    device = resolve_device(device)
    model, ckpt = load_trained(checkpoint, backend=backend, device=device)
    store_tables(model, table_dtype, precision)
    spec = model.spec
    data = ckpt.get("data") or {}
    source = data.get("source") or {}
    oov, oov_rule = oov_indices(spec.field_dims, source)
    out = Path(out)
    sidecar_name = out.name + ENCODING_SUFFIX
    encoding, note = raw_encoding(
        source, list(data.get("field_names") or []), list(spec.field_dims), vocab_dir
    )
    sidecar_text = None
    if encoding is not None:
        sidecar_text = json.dumps(encoding, separators=(",", ":"))
        encoding_meta = {
            "file": sidecar_name,
            "dataset": encoding["dataset"],
            "sha256": hashlib.sha256(sidecar_text.encode()).hexdigest(),
            "reader": "fastme/serve/raw_scoring.py (numpy + onnxruntime only)",
        }
    else:
        encoding_meta = {"file": None, "note": note}
    serving = ServingModel(model, oov, bounds, precision).to(device).eval()
    x = example_inputs(spec.field_dims).to(device)
    with torch.no_grad():
        expected = serving(x)
    meta = {
        "format": fmt,
        "spec": spec.to_dict(),
        "field_dims": list(spec.field_dims),
        "field_names": list(data.get("field_names") or []),
        "oov_index": oov,
        "oov_rule": oov_rule,
        "bounds": bounds,
        "backend": backend,
        "precision": precision,
        "table_dtype": table_dtype,
        "input": "x: int64 [B, N] per-field indices",
        "output": "click probability [B]",
        "encoding": encoding_meta,
        "example_input": x.cpu().tolist(),
        "example_output": expected.cpu().tolist(),
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    # The sidecar's context is the inner one: it is renamed into place just before the program,
    # and only once the program has passed its check; any failure removes both temporary files.
    with replace_on_success(out) as tmp, contextlib.ExitStack() as sidecar:
        if sidecar_text is not None:
            tmp_sidecar = sidecar.enter_context(replace_on_success(out.parent / sidecar_name))
            tmp_sidecar.write_text(sidecar_text)
        # 'oov' makes every index valid before the model sees it: its own check would be dead
        with bounds_check("off" if bounds == "oov" else "error"), _quiet_exporter():
            if fmt == "pt2":
                program = torch.export.export(serving, (x,), dynamic_shapes=({0: batch},))
                torch.export.save(program, tmp, extra_files={META_NAME: json.dumps(meta)})
            else:
                _export_onnx(serving, x, batch, tmp, meta)
        diff = check_roundtrip(tmp)
    return {**meta, "checked_max_difference": diff}


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the exporters say that is none of the user's business: the ONNX registry's
    notes on torchvision ops it skips, and torch's own deprecation of its pytree LeafSpec."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")

    def not_torchvision(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")

    registry.addFilter(not_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
            )
            yield
    finally:
        registry.removeFilter(not_torchvision)


def raw_encoding(source: dict, field_names: list, field_dims: list, vocab_dir=None):
    """(the encoding sidecar's content, None) for a model trained on raw files of a format with
    a ``sidecar`` (Criteo, Avazu); (None, why not) for other data. See docs/serving.md for the
    format."""
    kind = source.get("dataset")
    fmt = DATA_FORMATS.get(kind)
    options = source.get("options") or {}
    rows = fmt.sidecar(field_names, options) if fmt is not None else None
    if rows is None:
        what = (fmt is not None and fmt.TRAINED_ON) or (
            "already encoded data" if kind is None else f"{kind} data"
        )
        return None, (
            f"the model was trained on {what}: there is no raw-row vocabulary to ship; "
            f"serve it the encoded indices"
        )
    vocab = training_vocab(
        vocab_dir or source.get("cache_dir"),
        field_dims,
        field_names,
        f", which the export ships for raw {kind} rows,",
    )
    layout, kinds, columns = rows
    fields = [
        {
            "name": name,
            "column": column,
            "kind": k,
            "oov_index": len(values),
            "missing_index": len(values) + 1,
            "vocab": values,
        }
        for name, column, k, values in zip(field_names, columns, kinds, vocab)
    ]
    encoding = {
        "format": "fastme-raw-encoding",
        "version": 1,
        "dataset": kind,
        "options": options,
        **layout,
        "empty": "an empty cell is missing: the field's missing_index",
        "integer": {
            "pattern": INTEGER_PATTERN,
            "transform": "v > 2: floor(ln(v)^2) in float64; v <= 2: v - 2",
        },
        "hour": {
            "pattern": "^[0-9]{8}$",
            "format": "%y%m%d%H",
            "hour_of_day": "0-23",
            "weekday": "0 = Monday",
        },
        "field_dims": list(field_dims),
        "fields": fields,
    }
    return encoding, None


def _onnx_modules():
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the check against the eager model runs it)
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the onnx, onnxscript and onnxruntime packages "
            f"({exc}): {INSTALL_HINT}"
        ) from exc
    return onnx


def _export_onnx(serving, x, batch, out: Path, meta: dict) -> None:
    onnx = _onnx_modules()
    program = torch.onnx.export(
        serving,
        (x,),
        dynamo=True,
        input_names=["x"],
        output_names=["probability"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
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
