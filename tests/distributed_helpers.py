"""Starting small multi-process gloo groups from a test."""

import os
import socket
import sys

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_and_run(rank, world_size, port, fn, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    fn(rank, world_size, *args)
    # Every rank's communication has finished before any rank tears its group down (a rank
    # leaving while a peer still sends can abort the peer).
    dist.barrier()
    dist.destroy_process_group()
    # A finished rank leaves at once: at interpreter exit a communication thread that torch or
    # TorchRec left running can call std::terminate (SIGABRT), failing a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, world_size=2, *args):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes of one gloo group;
    an exception in any of them fails the caller with that process's traceback."""
    mp.spawn(_init_and_run, args=(world_size, free_port(), fn, args), nprocs=world_size)
