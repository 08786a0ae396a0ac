"""Scaling out (docs/distributed.md).

- :mod:`fastme.distributed.cost`: communication and memory per step of data parallel vs
  model-parallel tables, to choose between them.
- :mod:`fastme.distributed.torchrec`: ME tables as a TorchRec EmbeddingCollection sharded by
  DistributedModelParallel (needs the optional TorchRec install; imported only on request).
"""
