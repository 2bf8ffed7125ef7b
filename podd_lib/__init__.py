"""podd_lib: Poster Dataset Distillation (PoDD), "Distilling Datasets Into Less Than One Image".

The paper's concepts:
  poster     -- section 4.1: poster geometry, initialisation, differentiable patch extraction
  poddl      -- section 4.3: PoDDL fixed and learned labels
  poco       -- section 4.2: PoCO class ordering (CLIP text embeddings come from `clip`)
  algorithms -- Algorithm 1's "distillation algorithm": RaT-BPTT (section 3), and MTT, DM, DC and
                DREAM's sampling under posters (notebook 07); `algorithms.base` is what they share
  run        -- Algorithm 1 from a config: build the parts, loop with checkpoints and resume
Around them:
  models     -- the ConvNet family (and ResNet-18 / VGG-11 / AlexNet for cross-architecture tests)
  fast       -- the optional CPU speed backend (fused ConvNet block, compiled kernels, allocator)
  augment    -- differentiable augmentation (flip_rotate and the DSA operations)
  data       -- CIFAR-10/100, CUB-200, Tiny-ImageNet, any ImageFolder; ZCA whitening
  evaluate   -- the evaluation protocol (K fresh networks trained on the distilled set)
  config     -- paper configs and profiles (smoke / quick / paper)
  cli        -- the `podd` command

Importing podd_lib changes nothing in the process (no environment variables, no allocator settings).
"""

__version__ = "0.1.0"
