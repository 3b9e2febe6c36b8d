"""The defaults every training config starts from (big_vision style: every
default lives here, never in `config.get(key, default)` in the code)."""

import ml_collections
from ml_collections import config_dict


def base():
  """All fields `train_and_evaluate` reads, with their defaults."""
  c = ml_collections.ConfigDict()
  c.method = "selfcompress"        # or "dense": the float32 baseline
  c.dataset = "digits"             # digits | mnist | fashion_mnist
  c.data_dir = config_dict.placeholder(str)  # None: the Keras cache folders
  c.download = False               # fetch missing MNIST files (needs internet)
  c.verify_checksums = True        # SHA-256 of the canonical MNIST files
  c.num_validation = config_dict.placeholder(int)  # None: 5,000 for MNIST
  c.max_train_examples = 0         # 0: all; smoke runs use a few hundred
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  c.seed = 0
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.lr_schedule = "constant"       # or "cosine": decays to 0 over the run
  # Self-compression (REFERENCES.md section 1).
  c.gamma = 0.05                   # weight of the size term (bits/weight)
  c.target_kb = config_dict.placeholder(float)  # budget; adapts gamma
  c.target_rate = 0.002
  # Compression method (README "Choosing gates or bits"): "bits" (learned
  # bit depths), "gates" (L0 gates, float32 weights) or "gates+bits".
  c.compressor = "bits"
  # Per layer, by name: one of those or "none" (left uncompressed).
  c.compressor_per_layer = ml_collections.ConfigDict()
  c.bits_init = 8.0
  c.lr_multiplier = 100.0          # bit depth/exponent LR vs the weights'
  c.log_alpha_init = 3.0           # gates start open (test-time gate 1)
  c.gate_lr_multiplier = 10.0      # log_alpha LR vs the weights'
  c.min_channels = 1
  c.shed_every_epochs = 0          # >0: physically remove dead channels then
  c.shed_min_reduction = 0.1       # ...if that removes >= 10% of parameters
  # Distribution (README, "Scaling out").
  c.strategy = "default"           # one_device | mirrored | multi_worker | tpu
  c.tpu_address = ""               # tpu: name or grpc://host:port; "" = this VM
  c.cpu_devices = 0                # >0: split the CPU into logical devices
  # Iterative magnitude pruning (tools/imp.py; REFERENCES.md section 2).
  c.imp = ml_collections.ConfigDict()
  c.imp.levels = 15                # pruning rounds after the dense level 0
  c.imp.fraction = 0.2             # of the remaining weights, per round
  c.imp.strategy = "layerwise_magnitude"  # | global_magnitude | random
  c.imp.output_rate = 0.5          # output layer prunes fraction * this
  c.imp.layer_fractions = ()       # or one fraction per kernel, model order
  c.imp.reset = "init"             # init | rewind | lr_rewind | finetune | reinit
  c.imp.rewind_epoch = 1           # reset="rewind": weights of this epoch
  c.imp.finetune_learning_rate = 1e-4  # reset="finetune": constant LR
  c.imp.mask_from = config_dict.placeholder(str)  # an IMP workdir: its masks
  # Bookkeeping.
  c.checkpoint_every_epochs = 1
  c.verbose = 1                    # Keras progress bar (0: none)
  return c


def apply_arg(config, arg):
  """Applies the `:arg` of `--config=configs/x.py:arg`.

  `smoke` shrinks any config to a run of seconds (few examples, 2 epochs)
  that exercises the whole pipeline.
  """
  for part in filter(None, (arg or "").split(",")):
    if part == "smoke":
      config.epochs = 2
      config.max_train_examples = 512
      config.batch_size = 64
      if config.dataset != "digits":
        config.num_validation = 256
      config.imp.levels = min(config.imp.levels, 2)
    else:
      raise ValueError(f"Unknown config argument {part!r}; known: smoke.")
  return config
