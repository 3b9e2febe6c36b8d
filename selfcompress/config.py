"""The defaults every training config starts from (big_vision style: every
default lives here, never in `config.get(key, default)` in the code)."""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from selfcompress.errors import ConfigError


# One line per field: what it means. `--help` lists these with their
# defaults, and `tests/test_training.py` checks every field has one.
DOCS = {
    "method": "selfcompress | dense (the float32 baseline)",
    "dataset": "digits (bundled with scikit-learn) | mnist | fashion_mnist | "
               "npz:FILE.npz | images:FOLDER (train/ and test/ of class "
               "folders) | tfrecord:PATTERN_WITH_{split} | tfds:NAME",
    "data_dir": "folder of the dataset's files (relative npz/images/tfrecord "
                "paths are read from it; tfds: its data_dir); None: the "
                "Keras cache folder, or the working directory",
    "download": "fetch missing MNIST/Fashion-MNIST files (needs internet)",
    "verify_checksums": "check the SHA-256 of the canonical dataset files",
    "num_validation": "training examples held out for validation (by "
                      "seed); None: 5,000 for MNIST, 0 for digits, 10% for "
                      "file sources",
    "max_train_examples": "train on the first N examples; 0: all",
    "image_size": "images: (height, width) the images are resized to; (): "
                  "the first image's size",
    "color_mode": "images: grayscale | rgb | rgba",
    "tfrecord.x_feature": "tfrecord: the input feature's name",
    "tfrecord.x_dtype": "tfrecord: image (PNG/JPEG bytes) | uint8 (raw "
                        "bytes) | float32 | int64 (lists of values)",
    "tfrecord.x_shape": "tfrecord: one input's shape, e.g. (28, 28, 1)",
    "tfrecord.y_feature": "tfrecord: the label's (or targets') feature name",
    "tfrecord.y_dtype": "tfrecord: int64 (class index) | float32 "
                        "(regression targets)",
    "tfrecord.y_shape": "tfrecord: one label's shape; (): a scalar",
    "num_classes": "classes of a file source; None: the class folders, "
                   "TFDS's count, or the largest label + 1",
    "rescale": "inputs are multiplied by this; None: uint8 pixels / 255, "
               "other inputs as stored",
    "standardize": "subtract the training inputs' mean and divide by their "
                   "std (one number each)",
    "random_crop_padding": "augment training images: pad N pixels, crop "
                           "back at random; 0: off",
    "random_flip": "augment training images: random horizontal flips",
    "drop_remainder": "train on full batches only: each epoch leaves out "
                      "its last partial batch (a batch of another size "
                      "costs an XLA step a second compilation)",
    "model": "a built-in model (mlp | lenet300 | lenet5 | convnet | "
             "resnet20 | resnet_tiny), package.module:function, "
             "keras.applications.NAME or FILE.keras",
    "model_kwargs": "keyword arguments of the model builder (after "
                    "input_shape, num_classes)",
    "loss": "sparse_categorical_crossentropy (class labels) | mse | mae | "
            "huber (regression targets)",
    "metrics": "Keras metric names; the first is reported (test_<metric> "
               "in results.json)",
    "seed": "seed of the initialisation, data order and gate noise",
    "epochs": "epochs to train",
    "batch_size": "examples per step",
    "learning_rate": "Adam's learning rate for the weights",
    "lr_schedule": "constant | cosine (decays to 0 over the run)",
    "gamma": "weight of the size term of the loss (bits per weight)",
    "target_kb": "a size budget in KB: gamma adapts to reach it; None: fixed "
                 "gamma",
    "target_rate": "how fast gamma adapts towards target_kb (log-gamma per "
                   "step); None: ln(1e12) / training steps, so gamma can "
                   "cross its range [1e-8, 1e4] once in the run, however "
                   "long",
    "compressor": "bits (learned bit depths) | gates (L0 gates, float32 "
                  "weights) | gates+bits | inputs+bits, inputs+gates, "
                  "inputs+gates+bits (the same, plus L0 gates on each "
                  "layer's inputs) | sparse_bits, inputs+sparse_bits (bits "
                  "with a learned zero threshold per channel: weight-level "
                  "sparsity; storage=entropy)",
    "compressor_per_layer": "per layer name: a compressor, or none "
                            "(uncompressed); --config.compressor_per_layer."
                            "LAYER=METHOD",
    "storage": "how codes are stored and counted: fixed (ceil(b) bits per "
               "weight) | entropy (entropy-coded per layer, table "
               "included); bits, gates+bits and sparse_bits only",
    "bits_init": "initial bit depth of every channel",
    "lr_multiplier": "learning rate of bit depths and exponents vs the "
                     "weights'",
    "log_alpha_init": "initial gate log-odds (3.0: gates start open)",
    "gate_lr_multiplier": "learning rate of the gates vs the weights'",
    "min_channels": "channels each layer keeps at least",
    "shed_every_epochs": "physically remove dead channels every N epochs; 0: "
                         "never",
    "shed_min_reduction": "...only if that removes at least this share of "
                          "the parameters",
    "strategy": "default | one_device | mirrored | multi_worker | tpu",
    "tpu_address": "tpu: a name or grpc://host:port; empty: this VM's TPU",
    "cpu_devices": "split the CPU into N logical devices (to try mirrored); "
                   "0: one",
    "imp.levels": "IMP: pruning rounds after the dense level 0",
    "imp.fraction": "IMP: share of the remaining weights pruned per round",
    "imp.strategy": "IMP: layerwise_magnitude | global_magnitude | random",
    "imp.output_rate": "IMP: the output layer prunes fraction * this",
    "imp.layer_fractions": "IMP: one fraction per kernel in model order, or "
                           "() for fraction everywhere",
    "imp.reset": "IMP: init | rewind | lr_rewind | finetune | reinit",
    "imp.rewind_epoch": "IMP, reset=rewind: the epoch whose weights are "
                        "rewound to",
    "imp.finetune_learning_rate": "IMP, reset=finetune: the constant "
                                  "learning rate",
    "imp.mask_from": "IMP: another IMP workdir whose masks are reused",
    "checkpoint_every_epochs": "save a resumable checkpoint every N epochs",
    "verbose": "0: quiet | 1: one line per epoch | 2: Keras' progress bar "
               "per step",
}


def base():
  """All fields `train_and_evaluate` reads, with their defaults (meanings:
  `DOCS`)."""
  c = ml_collections.ConfigDict()
  c.method = "selfcompress"
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.download = False
  c.verify_checksums = True
  c.num_validation = config_dict.placeholder(int)
  c.max_train_examples = 0
  # Data read from files (README, "Your own model and data").
  c.image_size = ()
  c.color_mode = "rgb"
  c.tfrecord = ml_collections.ConfigDict()
  c.tfrecord.x_feature = "image"
  c.tfrecord.x_dtype = "image"
  c.tfrecord.x_shape = ()
  c.tfrecord.y_feature = "label"
  c.tfrecord.y_dtype = "int64"
  c.tfrecord.y_shape = ()
  c.num_classes = config_dict.placeholder(int)
  c.rescale = config_dict.placeholder(float)
  c.standardize = True
  c.random_crop_padding = 0
  c.random_flip = False
  c.drop_remainder = False
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  c.loss = "sparse_categorical_crossentropy"
  c.metrics = ("accuracy",)
  c.seed = 0
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.lr_schedule = "constant"
  # Self-compression (Csefalvay & Imber, "Self-Compressing Neural Networks",
  # 2023); gates: Louizos et al., "Learning Sparse Neural Networks through L0
  # Regularization", ICLR 2018.
  c.gamma = 0.05
  c.target_kb = config_dict.placeholder(float)
  c.target_rate = config_dict.placeholder(float)
  c.compressor = "bits"
  c.compressor_per_layer = ml_collections.ConfigDict()
  c.storage = "fixed"
  c.bits_init = 8.0
  c.lr_multiplier = 100.0
  c.log_alpha_init = 3.0
  c.gate_lr_multiplier = 10.0
  c.min_channels = 1
  c.shed_every_epochs = 0
  c.shed_min_reduction = 0.1
  # Distribution (README, "Scaling out").
  c.strategy = "default"
  c.tpu_address = ""
  c.cpu_devices = 0
  # Iterative magnitude pruning (tools/imp.py): Frankle & Carbin, "The
  # Lottery Ticket Hypothesis", ICLR 2019; Frankle et al., "Linear Mode
  # Connectivity and the Lottery Ticket Hypothesis", ICML 2020; Renda et al.,
  # "Comparing Rewinding and Fine-tuning in Neural Network Pruning", ICLR
  # 2020.
  c.imp = ml_collections.ConfigDict()
  c.imp.levels = 15
  c.imp.fraction = 0.2
  c.imp.strategy = "layerwise_magnitude"
  c.imp.output_rate = 0.5
  c.imp.layer_fractions = ()
  c.imp.reset = "init"
  c.imp.rewind_epoch = 1
  c.imp.finetune_learning_rate = 1e-4
  c.imp.mask_from = config_dict.placeholder(str)
  # Bookkeeping.
  c.checkpoint_every_epochs = 1
  c.verbose = 1
  return c


def describe(config=None):
  """The config fields, their values (defaults unless `config` is given)
  and meanings, one per line: the config part of `--help`."""
  from selfcompress import workdir  # the flattening JSON records
  values = workdir.flat(config if config is not None else base())
  width = max(len(k) for k in values)
  lines = ["Config fields (--config.FIELD=VALUE; value shown is the "
           + ("config's" if config is not None else "default") + "):"]
  for key, value in values.items():
    doc = DOCS.get(key) or DOCS.get(key.split(".")[0], "")
    lines.append(f"  {key:<{width}}  {value!r:<14} {doc}")
  return "\n".join(lines)


# Settings of the compression, meaningless to a dense run (besides
# compressor_per_layer); `training.validate` refuses them there.
COMPRESSION_FIELDS = ("target_kb", "compressor", "shed_every_epochs")


def dense(config):
  """`config` as its dense float32 baseline: `method="dense"`, with the
  compression's settings back at their defaults. Changes `config`; returns
  it."""
  defaults = base()
  config.method = "dense"
  for field in COMPRESSION_FIELDS:
    config[field] = defaults[field]
  config.compressor_per_layer = ml_collections.ConfigDict()
  return config


def apply_arg(config, arg):
  """Applies the `:arg` of `--config=configs/x.py:arg`.

  `smoke` shrinks any config to a run of seconds (few examples, 2 epochs)
  that exercises the whole pipeline. `dense` makes it the dense float32
  baseline of the same model, data and schedule (`dense()`).
  """
  for part in filter(None, (arg or "").split(",")):
    if part == "dense":
      dense(config)
    elif part == "smoke":
      config.epochs = 2
      config.max_train_examples = 512
      config.batch_size = 64
      if config.dataset != "digits":
        config.num_validation = 256
      config.imp.levels = min(config.imp.levels, 2)
    else:
      raise ConfigError(f"Unknown config argument {part!r} (in "
                        "--config=FILE:ARG); known: smoke, dense.")
  return config


def beside(path, name, arg=None):
  """`get_config(arg)` of the config file `name` in the folder of `path`:
  for a config built on another (an IMP config on its self-compression
  one), which a config file cannot import by module name."""
  source = os.path.join(os.path.dirname(os.path.abspath(path)), name)
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(name)[0], source)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
