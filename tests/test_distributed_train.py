"""Data-parallel training: the trainer on 2 gloo ranks and ``torchrun -m fastme train``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from distributed_helpers import free_port, spawn
from fastme.cli import main
from fastme.data import make_synthetic
from fastme.models import build
from fastme.train import TrainConfig, load_checkpoint, train

DIMS = [4, 8, 16, 32, 64]


def _data():
    return make_synthetic(3_000, field_dims=DIMS, min_count=0, interaction_scale=2.5)


#: The heterogeneous model with every expert kind, one set each, small.
HETERO = dict(
    experts=("dnn", "ipnn", "nfwfm", "dcnv2", "xdeepfm", "autoint", "finalmlp"),
    expert_options={
        "dcnv2": {"num_cross_layers": 2},
        "xdeepfm": {"cin_layer_sizes": (3, 2)},
        "autoint": {"attention_dim": 4, "num_attention_layers": 2},
    },
)


def _batchnorm_free_model(name="dcnv2"):
    """BatchNorm in train mode sees each rank's part of a batch only (SyncBatchNorm is CUDA-only)
    and dropout draws differ per rank; without both, data parallel must equal one process."""
    torch.manual_seed(0)
    if name == "hetero":  # its gate's running average is a buffer that the ranks average too
        model = build("hetero", DIMS, 7, hidden_dim=16, dropout=0.0, **HETERO).double()
    else:
        model = build(name, DIMS, 2, multi=True, hidden_dim=16, dropout=0.0).double()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm1d):
                setattr(module, name, nn.Identity())
    return model


# batch 250 does not divide the 2400 training rows: the last batch has 150 (75 per rank)
SETTINGS = dict(epochs=2, batch_size=250, lr=3e-3, shuffle=True, progress=False, verbose=False)


def _train_data_parallel(rank, world, out, name):
    from fastme.distributed import data_parallel as dp
    from fastme.distributed.trainer import train as train_data_parallel

    ranks = dp.init("cpu")
    train_data_parallel(
        _batchnorm_free_model(name), _data(), TrainConfig(out_dir=out, **SETTINGS), ranks=ranks
    )


@pytest.mark.parametrize("name", ["dcnv2", "hetero"])
def test_two_ranks_train_exactly_like_one_process_on_the_joined_batches(tmp_path, name):
    single = train(
        _batchnorm_free_model(name),
        _data(),
        TrainConfig(out_dir=str(tmp_path / "one"), **SETTINGS),
    )
    spawn(_train_data_parallel, 2, str(tmp_path / "two"), name)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "best.pt",
        "last.pt",
        "results.json",
    ]  # rank 0's files only (its lock file is gone)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (single["world_size"], two["world_size"]) == (1, 2)
    for a, b in zip(single["history"], two["history"]):
        for key in ("train_loss", "val_auc", "val_logloss"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key  # the loss is float32
    assert two["test_auc"] == pytest.approx(single["test_auc"], rel=1e-6)
    ours = load_checkpoint(tmp_path / "two" / "best.pt")["model"]
    theirs = load_checkpoint(tmp_path / "one" / "best.pt")["model"]
    assert list(ours) == list(theirs)  # plain keys, no "module." prefix
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)


def test_each_rank_draws_its_own_dropout_masks():
    from fastme.distributed.data_parallel import rank_seed
    from fastme.train.trainer import _epoch_seed

    for seed, epoch in ((0, 0), (0, 3), (7, 3)):
        single = _epoch_seed(seed, epoch)
        seeds = [rank_seed(single, seed, epoch, rank) for rank in range(4)]
        assert seeds[0] == single  # rank 0 draws what one process draws
        assert len(set(seeds)) == 4
    assert rank_seed(1, 0, 0, 1) != rank_seed(1, 0, 1, 1)  # and anew every epoch


def _batchnorm_model():
    torch.manual_seed(0)
    return build("dcnv2", DIMS, 2, multi=True, hidden_dim=16, dropout=0.0).double()


# The weights hardly move: every step's batch means are those of the initial model in both runs.
STILL = dict(SETTINGS, lr=1e-12)


def _train_batchnorm_model(rank, world, out):
    from fastme.distributed import data_parallel as dp
    from fastme.distributed.trainer import train as train_data_parallel

    ranks = dp.init("cpu")
    train_data_parallel(_batchnorm_model(), _data(), TrainConfig(out_dir=out, **STILL), ranks=ranks)


def test_batchnorm_running_means_are_those_of_the_whole_batches(tmp_path):
    """Each rank's BatchNorm statistics come from its parts of the batches; they are averaged
    before every evaluation, so the model scored and saved has the running means of the whole
    batches (not those of rank 0's parts alone)."""
    train(_batchnorm_model(), _data(), TrainConfig(out_dir=str(tmp_path / "one"), **STILL))
    spawn(_train_batchnorm_model, 2, str(tmp_path / "two"))
    one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    # The BatchNorms after the first normalise inputs that per-part normalisation already changed
    # (no SyncBatchNorm on CPU): the first, the per-set projection's, is compared.
    means = [k for k in one if k.endswith("running_mean") and k.startswith("projection.")]
    assert means
    for key in means:
        torch.testing.assert_close(two[key], one[key], rtol=1e-7, atol=1e-9, msg=key)


# ---- the command line, through torchrun ------------------------------------------------------

CLI = [
    "--data",
    "synthetic",
    "--synthetic-samples",
    "3000",
    "--data-option",
    f"field_dims={DIMS}".replace(" ", ""),
    "--model",
    "dcnv2",
    "--mode",
    "me",
    "--scale",
    "2",
    "--model-option",
    "hidden_dim=16",
    "--model-option",
    "dropout=0.0",
    "--batch-size",
    "256",
    "--lr",
    "3e-3",
    "--device",
    "cpu",
    "--no-progress",
]


def torchrun(nproc, *args, wait=True):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        "-m",
        "fastme",
        "train",
        *CLI,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_torchrun_train_writes_one_results_file_matching_a_single_process_run(tmp_path):
    assert main(["train", *CLI, "--epochs", "2", "--out", str(tmp_path / "one")]) == 0
    printed = torchrun(2, "--epochs", "2", "--out", str(tmp_path / "two"))
    assert printed.count("test AUC") == 1  # one summary, from rank 0
    assert "2 processes (data parallel)" in printed
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and two["epochs"] == one["epochs"] == 2
    # BatchNorm statistics are per rank on CPU (no SyncBatchNorm): close, not equal
    assert two["test_auc"] == pytest.approx(one["test_auc"], abs=0.03)
    assert two["history"][-1]["train_loss"] == pytest.approx(
        one["history"][-1]["train_loss"], rel=0.01
    )
    assert len(two["field_ia"]) == len(DIMS)  # analysis on the unwrapped model
    best = load_checkpoint(tmp_path / "two" / "best.pt")
    plain = build("dcnv2", best["data"]["field_dims"], 2, multi=True, hidden_dim=16, dropout=0.0)
    plain.load_state_dict(best["model"])  # a plain model loads it as it is


def test_a_killed_two_rank_run_resumes_with_two_ranks_or_one(tmp_path):
    out = tmp_path / "run"
    job = torchrun(2, "--epochs", "50", "--patience", "50", "--out", str(out), wait=False)
    deadline = time.monotonic() + 600
    try:
        while not ((out / "last.pt").is_file() and (out / "best.pt").is_file()):
            assert job.poll() is None, job.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.2)
    finally:
        # SIGTERM, as a preempted job gets it: torchrun stops its workers mid-epoch and exits.
        os.killpg(job.pid, signal.SIGTERM)
        job.wait()
    assert job.returncode != 0  # it was stopped, it did not finish
    killed = load_checkpoint(out / "last.pt")
    done = killed["epoch"]
    assert 1 <= done < 50 and killed["world_size"] == 2

    torchrun(2, "--epochs", str(done + 1), "--patience", "50", "--out", str(out), "--resume")
    assert (
        main(
            [
                "train",
                *CLI,
                "--epochs",
                str(done + 2),
                "--patience",
                "50",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == done + 2 and results["world_size"] == 1
    assert [h["epoch"] for h in results["history"]] == list(range(1, done + 3))
    assert results["history"][:done] == killed["trainer"]["history"]


def test_data_parallel_training_refuses_a_sparse_table_optimizer():
    from types import SimpleNamespace

    from fastme.distributed.trainer import DataParallelTrainer

    ranks = SimpleNamespace(world_size=2)  # refused before any process group is used
    config = TrainConfig(batch_size=250, table_optimizer="rowwise_adagrad")
    with pytest.raises(ValueError, match="rowwise_adagrad is not supported in data-parallel"):
        DataParallelTrainer(_batchnorm_free_model(), _data(), config, ranks=ranks)
