"""Command-line entry points (absl flags + ml_collections configs). Each is a
thin shell over one library call; `tools/*.py` and the console scripts
`selfcompress-train` / `selfcompress-sweep` / `selfcompress-imp` /
`selfcompress-export` run these."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def _common_flags():
  config_flags.DEFINE_config_file(
      "config", None, "Config file: configs/NAME.py[:arg]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where results, logs and checkpoints go.")
  flags.mark_flags_as_required(["config", "workdir"])


def _no_args(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def train():
  """Trains and evaluates one config; run again to resume."""
  _common_flags()

  def main(argv):
    _no_args(argv)
    from selfcompress import training
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  app.run(main)


def imp():
  """Iterative magnitude pruning with rewinding; run again to resume."""
  _common_flags()

  def main(argv):
    _no_args(argv)
    from selfcompress import imp as imp_lib
    imp_lib.run(FLAGS.config, FLAGS.workdir)
  app.run(main)


def sweep():
  """Runs a config over several gammas and seeds and draws the Pareto plot."""
  _common_flags()
  flags.DEFINE_list("gammas", ["0.003", "0.01", "0.03", "0.1", "0.3", "1.0"],
                    "Size-penalty weights to sweep.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; each gamma is run once per seed.")
  flags.DEFINE_bool("dense", True, "Also train the dense float32 baseline.")

  def main(argv):
    _no_args(argv)
    from selfcompress import sweep as sweep_lib
    try:
      gammas = [float(g) for g in FLAGS.gammas]
      seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as e:
      raise app.UsageError(f"--gammas takes numbers, --seeds integers: {e}")
    sweep_lib.run_sweep(FLAGS.config, FLAGS.workdir, gammas, seeds,
                        dense=FLAGS.dense)
  app.run(main)


def export():
  """Exports a trained model (a workdir's model.keras, or any .keras file)."""
  flags.DEFINE_string("workdir", None, "A tools/train.py workdir (uses its "
                      "model.keras).")
  flags.DEFINE_string("model", None, "A .keras file (instead of --workdir).")
  flags.DEFINE_string("output", None, "The SavedModel folder or .tflite file.")
  flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite"],
                    "Export format.")
  flags.DEFINE_enum("litert_weights", "float32", ["float32", "float16"],
                    "With --format=tflite: float16 halves the weights, "
                    "rounding some of them (see selfcompress.export).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export.")
  flags.mark_flags_as_required(["output"])

  def main(argv):
    _no_args(argv)
    if bool(FLAGS.workdir) == bool(FLAGS.model):
      raise app.UsageError("Give exactly one of --workdir and --model.")
    path = FLAGS.model or os.path.join(FLAGS.workdir, "model.keras")
    if not os.path.exists(path):
      raise app.UsageError(
          f"{path} does not exist. A workdir has model.keras once "
          "tools/train.py has finished; otherwise pass --model=FILE.keras.")
    import keras
    import selfcompress as sc
    report = sc.export(keras.models.load_model(path), FLAGS.output,
                       format=FLAGS.format, overwrite=FLAGS.overwrite,
                       litert_weights=FLAGS.litert_weights)
    print(report)
  app.run(main)
