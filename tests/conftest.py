import os

import torch

# Without a GPU, Triton kernels run through Triton's CPU interpreter. The variable must be set
# before Triton compiles anything, so it is set here, before any test module imports fastme.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
