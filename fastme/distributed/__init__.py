"""Scaling out (docs/distributed.md).

- :mod:`fastme.distributed.data_parallel` and :mod:`fastme.distributed.trainer`: data-parallel
  training with DDP (``torchrun --nproc_per_node N -m fastme train ...``).
- :mod:`fastme.distributed.torchrec`: ME tables as a TorchRec EmbeddingCollection sharded by
  DistributedModelParallel (needs the optional TorchRec install; imported only on request).
- :mod:`fastme.distributed.cost` and :mod:`fastme.distributed.measure`: communication and memory
  per step of the two, estimated and measured, to choose between them.
"""
