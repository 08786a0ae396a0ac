"""Grouped multi-set embedding lookup: forward, forward+backward (dense table gradient), and a
lookup training step with a plain SGD update; against FBGEMM's table-batched embedding and
TorchRec's EmbeddingCollection / EmbeddingBagCollection.

The peers hold one table per field of width M*K, which makes their weights exactly fastme's
[rows, M, K] table; they are timed in their own layouts (feature-major indices, a
KeyedJaggedTensor for TorchRec, converted once per input set, outside the timing), and their
results are permuted to fastme's [B, M, N, K] only for the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import costs
import harness
from fastme import ops
from harness import DEVICE, EMBED_DIM, FIELD_DIMS, NUM_FIELDS, NUM_ROWS, OP_BATCH

PEERS = {
    "fbgemm": "FBGEMM DenseTableBatchedEmbeddingBagsCodegen (pooling NONE), one table per field",
    "torchrec_ec": "TorchRec EmbeddingCollection, one table per field",
    "torchrec_ebc": "TorchRec EmbeddingBagCollection (sum of the one index per field)",
}
SGD_PEERS = {
    "fbgemm": "FBGEMM SplitTableBatchedEmbeddingBagsCodegen, EXACT_SGD fused into "
    "the backward (sparse row update)"
}
LR = 1e-3


def lookup_inputs(sets: int, backward: bool, seed: int) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    table = torch.randn(NUM_ROWS, sets, EMBED_DIM, generator=g, device=DEVICE) * 0.1
    item = {
        "table": table.requires_grad_(backward),
        "indices": harness.random_indices(g, OP_BATCH),
        "offsets": harness.field_offsets(),
    }
    if backward:
        item["grad_out"] = torch.randn(
            OP_BATCH, sets, NUM_FIELDS, EMBED_DIM, generator=g, device=DEVICE
        )
    return item


def _feature_major(indices: torch.Tensor) -> torch.Tensor:
    return indices.t().reshape(-1).contiguous()  # [N*B]: field 0's batch first


def _per_field_tables(table: torch.Tensor) -> list[torch.Tensor]:
    """fastme's [rows, M, K] table -> one [D_i, M*K] table per field."""
    flat = table.detach().reshape(NUM_ROWS, -1)
    return list(torch.split(flat, list(FIELD_DIMS)))


def _to_fastme(rows_bnmk: torch.Tensor, sets: int) -> torch.Tensor:
    """[B, N, M*K] (or [B, N*M*K]) peer output -> fastme's [B, M, N, K]."""
    return rows_bnmk.reshape(OP_BATCH, NUM_FIELDS, sets, EMBED_DIM).permute(0, 2, 1, 3)


def _from_fastme(t: torch.Tensor) -> torch.Tensor:
    """fastme's [B, M, N, K] -> [B, N, M*K] contiguous."""
    b, m, n, k = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, m * k).contiguous()


def _fbgemm_tbe(table: torch.Tensor, requires_grad: bool):
    training = harness.require(
        "fbgemm_gpu.split_table_batched_embeddings_ops_training", "fbgemm_gpu"
    )
    sets = table.shape[1]
    tbe = training.DenseTableBatchedEmbeddingBagsCodegen(
        [(d, sets * EMBED_DIM) for d in FIELD_DIMS],
        pooling_mode=training.PoolingMode.NONE,
        use_cpu=DEVICE.type == "cpu",
    )
    with torch.no_grad():
        tbe.weights.copy_(table.detach().reshape(-1))
    tbe.weights.requires_grad_(requires_grad)
    return tbe


def _fbgemm_layout(out: torch.Tensor, sets: int) -> torch.Tensor:
    """FBGEMM returns batch-major [B, N*M*K] (CPU build) or feature-major [N*B, M*K]."""
    if tuple(out.shape) == (OP_BATCH, NUM_FIELDS * sets * EMBED_DIM):
        return _to_fastme(out, sets)
    if tuple(out.shape) == (NUM_FIELDS * OP_BATCH, sets * EMBED_DIM):
        return out.reshape(NUM_FIELDS, OP_BATCH, sets, EMBED_DIM).permute(1, 2, 0, 3)
    raise harness.Unavailable(f"unexpected FBGEMM output shape {tuple(out.shape)}")


def _fbgemm_grad_layout(grad_bmnk: torch.Tensor, out_shape) -> torch.Tensor:
    t = grad_bmnk.permute(0, 2, 1, 3)  # [B, N, M, K]
    if out_shape[0] == OP_BATCH:
        return t.reshape(out_shape).contiguous()
    return t.permute(1, 0, 2, 3).reshape(out_shape).contiguous()


def _kjt(indices: torch.Tensor):
    jagged = harness.require("torchrec.sparse.jagged_tensor", "torchrec")
    return jagged.KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(NUM_FIELDS)],
        values=_feature_major(indices),
        lengths=torch.ones(NUM_FIELDS * OP_BATCH, dtype=torch.long, device=DEVICE),
    )


def _torchrec_module(table: torch.Tensor, bags: bool):
    torchrec = harness.require("torchrec", "torchrec")
    sets = table.shape[1]
    config = torchrec.EmbeddingBagConfig if bags else torchrec.EmbeddingConfig
    tables = [
        config(
            name=f"t{i}", embedding_dim=sets * EMBED_DIM, num_embeddings=d, feature_names=[f"f{i}"]
        )
        for i, d in enumerate(FIELD_DIMS)
    ]
    module = (torchrec.EmbeddingBagCollection if bags else torchrec.EmbeddingCollection)(
        tables=tables, device=DEVICE
    )
    named = dict(module.named_parameters())
    prefix = "embedding_bags" if bags else "embeddings"
    params = [named[f"{prefix}.t{i}.weight"] for i in range(NUM_FIELDS)]  # field order
    with torch.no_grad():
        for w, src in zip(params, _per_field_tables(table)):
            w.copy_(src)
    return module, params


@dataclass(frozen=True)
class LookupCase(harness.Case):
    sets: int
    backward: bool
    kind = "op"
    peers = PEERS

    @property
    def id(self) -> str:
        return f"lookup-{'fwdbwd' if self.backward else 'fwd'}-M{self.sets}"

    @property
    def title(self) -> str:
        return f"multi_embedding_lookup {'fwd+bwd' if self.backward else 'fwd'} M={self.sets}"

    def variants(self) -> list[str]:
        return [*harness.own_variants(), *PEERS]

    def prepare(self) -> harness.CaseData:
        pool = harness.build_pool(
            lambda s: lookup_inputs(self.sets, self.backward, s), harness.tensor_bytes
        )
        return harness.CaseData(
            pool=pool,
            tol=1e-4,
            cost=costs.multi_embedding_lookup(
                OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM, NUM_ROWS, backward=self.backward
            ),
        )

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        if variant == "fbgemm":
            return self._fbgemm(data)
        if variant in ("torchrec_ec", "torchrec_ebc"):
            return self._torchrec(data, bags=variant == "torchrec_ebc")
        return harness.own_op_runner(
            variant,
            "multi_embedding_lookup",
            ("table", "indices", "offsets"),
            data.pool,
            self.backward,
        )

    def _fbgemm(self, data):
        pool = [
            {
                "tbe": _fbgemm_tbe(s["table"], self.backward),
                "indices": _feature_major(s["indices"]),
                "offsets": torch.arange(NUM_FIELDS * OP_BATCH + 1, device=DEVICE),
            }
            for s in data.pool
        ]
        with torch.no_grad():
            shape = tuple(pool[0]["tbe"](pool[0]["indices"], pool[0]["offsets"]).shape)
        if self.backward:
            for item, s in zip(pool, data.pool):
                item["grad_out"] = _fbgemm_grad_layout(s["grad_out"], shape)

        def call(item):
            out = item["tbe"](item["indices"], item["offsets"])
            if not self.backward:
                return out, None
            return out, torch.autograd.grad(out, [item["tbe"].weights], item["grad_out"])[0]

        def check():
            out, grad = call(pool[0])
            got = {"out": _fbgemm_layout(out, self.sets)}
            if grad is not None:
                got["grad_table"] = grad.reshape(NUM_ROWS, self.sets, EMBED_DIM)
            return got

        return harness.Runner(call=call, pool=pool, check=check)

    def _torchrec(self, data, bags: bool):
        pool = []
        for s in data.pool:
            module, params = _torchrec_module(s["table"], bags)
            item = {"module": module, "params": params, "kjt": _kjt(s["indices"])}
            if self.backward:
                grad = _from_fastme(s["grad_out"])  # [B, N, M*K]
                item["grad_out"] = (
                    grad.reshape(OP_BATCH, -1)
                    if bags
                    else [grad[:, i].contiguous() for i in range(NUM_FIELDS)]
                )
            pool.append(item)

        def call(item):
            result = item["module"](item["kjt"])
            outs = (
                result.values() if bags else [result[f"f{i}"].values() for i in range(NUM_FIELDS)]
            )
            if not self.backward:
                return outs, None
            return outs, torch.autograd.grad(outs, item["params"], item["grad_out"])

        def check():
            outs, grads = call(pool[0])
            rows = outs if bags else torch.stack(outs, 1)
            got = {"out": _to_fastme(rows, self.sets)}
            if grads is not None:
                got["grad_table"] = torch.cat(grads).reshape(NUM_ROWS, self.sets, EMBED_DIM)
            return got

        return harness.Runner(call=call, pool=pool, check=check)


@dataclass(frozen=True)
class LookupSGDCase(harness.Case):
    """One lookup training step: forward, backward against a fixed output gradient, SGD update
    (lr 1e-3, no weight decay). fastme computes the dense table gradient and updates every row
    (torch.optim.SGD); FBGEMM fuses an exact sparse SGD update into its backward. FBGEMM's CPU
    build has no fused Adam, so SGD is the optimizer both can run."""

    sets: int
    kind = "op"
    peers = SGD_PEERS

    @property
    def id(self) -> str:
        return f"lookup-sgd-M{self.sets}"

    @property
    def title(self) -> str:
        return f"multi_embedding_lookup train step (SGD) M={self.sets}"

    def variants(self) -> list[str]:
        return [harness.BASELINE, *harness.kernel_backends(), *SGD_PEERS]

    def prepare(self) -> harness.CaseData:
        pool = harness.build_pool(lambda s: lookup_inputs(self.sets, True, s), harness.tensor_bytes)
        cost = costs.multi_embedding_lookup(
            OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM, NUM_ROWS, backward=True
        )
        table_bytes = NUM_ROWS * self.sets * EMBED_DIM * 4
        # the update: read the table and its gradient, write the table
        return harness.CaseData(
            pool=pool,
            tol=1e-4,
            cost=costs.Cost(cost.bytes + 3 * table_bytes, cost.flops + 2 * table_bytes / 4),
        )

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        if variant == "fbgemm":
            return self._fbgemm(data)
        backend = "reference" if variant == "eager" else variant

        def fresh(s):
            table = torch.nn.Parameter(s["table"].detach().clone())
            return {**s, "table": table, "opt": torch.optim.SGD([table], lr=LR)}

        pool = [fresh(s) for s in data.pool]

        def call(item):
            out = ops.multi_embedding_lookup(
                item["table"], item["indices"], item["offsets"], backend=backend
            )
            item["opt"].zero_grad(set_to_none=True)
            out.backward(item["grad_out"])
            item["opt"].step()
            return out

        def check():
            item = fresh(data.pool[0])
            out = call(item)
            return {"out": out, "table_after": item["table"].detach()}

        return harness.Runner(call=call, pool=pool, check=check)

    def _fbgemm(self, data):
        training = harness.require(
            "fbgemm_gpu.split_table_batched_embeddings_ops_training", "fbgemm_gpu"
        )
        configs = harness.require("fbgemm_gpu.split_embedding_configs", "fbgemm_gpu")
        width = self.sets * EMBED_DIM
        location = (
            training.EmbeddingLocation.DEVICE
            if DEVICE.type == "cuda"
            else training.EmbeddingLocation.HOST
        )
        compute = (
            training.ComputeDevice.CUDA if DEVICE.type == "cuda" else training.ComputeDevice.CPU
        )

        def fresh(s):
            tbe = training.SplitTableBatchedEmbeddingBagsCodegen(
                [(d, width, location, compute) for d in FIELD_DIMS],
                optimizer=configs.EmbOptimType.EXACT_SGD,
                learning_rate=LR,
                pooling_mode=training.PoolingMode.NONE,
            )
            with torch.no_grad():
                for w, src in zip(tbe.split_embedding_weights(), _per_field_tables(s["table"])):
                    w.copy_(src)
            item = {
                "tbe": tbe,
                "indices": _feature_major(s["indices"]),
                "offsets": torch.arange(NUM_FIELDS * OP_BATCH + 1, device=DEVICE),
            }
            with torch.no_grad():
                shape = tuple(tbe(item["indices"], item["offsets"]).shape)
            item["grad_out"] = _fbgemm_grad_layout(s["grad_out"], shape)
            return item

        pool = [fresh(s) for s in data.pool]

        def call(item):
            out = item["tbe"](item["indices"], item["offsets"])
            out.backward(item["grad_out"])  # the update happens here
            return out

        def check():
            item = fresh(data.pool[0])
            out = call(item)
            after = torch.cat([w.detach() for w in item["tbe"].split_embedding_weights()])
            return {
                "out": _fbgemm_layout(out.detach(), self.sets),
                "table_after": after.reshape(NUM_ROWS, self.sets, EMBED_DIM),
            }

        return harness.Runner(call=call, pool=pool, check=check)


CASES = [LookupCase(m, backward) for m in harness.OP_SETS for backward in (False, True)]
CASES += [LookupSGDCase(m) for m in harness.OP_SETS]


@pytest.mark.parametrize("case", harness.params(CASES))
def test_multi_embedding_lookup(benchmark, case):
    harness.run(benchmark, case)
