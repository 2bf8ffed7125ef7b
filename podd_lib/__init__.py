"""podd_lib: Poster Dataset Distillation (PoDD), "Distilling Datasets Into Less Than One Image".

One module per concept of the paper:
  poster    -- section 4.1: poster geometry, initialisation, differentiable patch extraction
  poddl     -- section 4.3: PoDDL fixed and learned labels
  poco      -- section 4.2: PoCO class ordering with CLIP text embeddings
  ratbptt   -- section 3: RaT-BPTT, the distillation algorithm under the poster
  algorithm -- Algorithm 1's "distillation algorithm" input: the interface and the shared outer step
  mtt, dm, dc, dream -- other algorithms under posters: trajectory, distribution and gradient
               matching, and DREAM's representative real batches (notebook 07)
  models    -- the ConvNet family (and ResNet-18 / VGG-11 / AlexNet for cross-architecture tests)
  augment   -- differentiable augmentation (flip_rotate and the DSA operations)
  data      -- CIFAR-10/100, CUB-200, Tiny-ImageNet, any ImageFolder; ZCA whitening
  evaluate  -- the evaluation protocol (K fresh networks trained on the distilled set)
  config    -- paper configs and profiles (smoke / quick / paper)
  runtime   -- process-wide speed and memory settings (CPU allocator)
  cli       -- the `podd` command
"""

import os as _os

# Large CPU tensors on transparent huge pages: PyTorch's allocator reads this once, at its first
# allocation of 2 MB or more. Activation-sized temporaries then cost far fewer page faults; the
# cpu-bench outer step took 13.0-14.5 s instead of 15.5-15.9 s at the same peak memory (README, "Speed").
# Export THP_MEM_ALLOC_ENABLE=0 to opt out.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
