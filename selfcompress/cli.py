"""Command-line entry points (absl flags + ml_collections configs). Each is a
thin shell over one library call; `tools/*.py` and the console scripts
`selfcompress-train` / `selfcompress-sweep` / `selfcompress-imp` /
`selfcompress-export` / `selfcompress-compare` run these.

A mistake in what the user gave (a config field, a value, data, a workdir;
`selfcompress.errors.UserError`) prints one message without a traceback and
exits with status 1. `--help` lists the flags and the config fields.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_PER_LAYER = "--config.compressor_per_layer."


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _take_per_layer_args():
  """Removes `--config.compressor_per_layer.LAYER=METHOD` from sys.argv
  (ml_collections reads overrides from it, and the locked config cannot hold
  a field for a layer it has not heard of) and keeps them for `_config()`."""
  rest = [sys.argv[0]]
  for arg in sys.argv[1:]:
    if arg.startswith(_PER_LAYER):
      name, sep, value = arg[len(_PER_LAYER):].partition("=")
      if not (name and sep and value):
        _fail(f"{arg}: give it as {_PER_LAYER}LAYER=METHOD, e.g. "
              f"{_PER_LAYER}dense=gates.")
      _PER_LAYER_ARGS[name] = value
    else:
      rest.append(arg)
  sys.argv[:] = rest


_PER_LAYER_ARGS = {}


def _common_flags():
  _take_per_layer_args()
  config_flags.DEFINE_config_file(
      "config", None, "Config file: configs/NAME.py[:arg]; override any field "
      "with --config.FIELD=VALUE (fields: see above).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where results, logs and checkpoints "
                      "go. Run the same command again to resume.")


def _parse(argv):
  """absl's parsing, with one clear line, not a traceback, for a mistyped
  flag or config field. `--help` prints the usage and exits 0."""
  if any(a in ("--help", "-h", "-help", "--helpshort", "-?") for a in argv[1:]):
    module = sys.modules["__main__"]
    print((module.__doc__ or "").rstrip() + "\n")
    print("Flags:")
    print(FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}\nPass --help for the flags and config fields.")
  except (AttributeError, KeyError) as e:
    # ml_collections: an override of a field the config does not have; its
    # message carries a suggestion ('Did you mean "gamma" instead of ...').
    text = str(e).replace("\\'", "'")
    names = re.findall(r"'([A-Za-z0-9_]+)'", text)
    field = names[0] if names else "?"
    given = next((a.split("=")[0] for a in argv[1:]
                  if a.startswith("--config.")
                  and a.split("=")[0].rsplit(".", 1)[-1] == field),
                 f"--config...{field}")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    fix = (f" Did you mean {given.rsplit('.', 1)[0]}.{hint.group(1)}?"
           if hint else "")
    _fail(f"{given}: the config has no field {field!r}.{fix} Pass --help for "
          "the config fields.")
  except (TypeError, ValueError) as e:
    _fail(f"{e}\nPass --help for the flags and config fields.")


def _config():
  """FLAGS.config with the per-layer overrides, or one clear error."""
  config = FLAGS.config
  if config is None:
    _fail("--config is required: a config file such as "
          "--config=configs/default.py.")
  try:
    config.keys()
  except OSError as e:  # the config file is missing or failed to load
    _fail(f"--config: cannot load the config file. {e.__cause__ or e}")
  for name, value in _PER_LAYER_ARGS.items():
    with config.unlocked():
      config.compressor_per_layer[name] = value
  return config


def _require_workdir():
  if not FLAGS.workdir:
    _fail("--workdir is required: the folder for the run's results, logs and "
          "checkpoints (a new one, or the same as before to resume).")


def _no_args(argv):
  if len(argv) > 1:
    _fail(f"Unexpected arguments: {argv[1:]}. Flags take the form "
          "--name=value.")


def _run(main, with_config=True):
  """app.run(main) with quiet imports, the config fields in --help, and
  user errors as one line."""
  if with_config:
    from selfcompress import config as config_lib
    module = sys.modules["__main__"]
    module.__doc__ = ((module.__doc__ or "").rstrip() + "\n\n"
                      + config_lib.describe() + "\n")
  from selfcompress import callbacks, errors

  def wrapped(argv):
    if not FLAGS["verbosity"].present:
      # Only warnings from absl/TensorFlow's Python logging (-v 0: info).
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except (errors.UserError, callbacks.TrainingDivergedError) as e:
      _fail(str(e))
    except KeyboardInterrupt:
      _fail("interrupted. Run the same command again to resume.")
  app.run(wrapped, flags_parser=_parse)


def train():
  """Trains and evaluates one config; run again to resume."""
  _common_flags()
  flags.DEFINE_bool("extend_epochs", False, "Let a finished (or interrupted) "
                    "run continue to a larger --config.epochs (constant "
                    "learning rate only).")

  def main(argv):
    _no_args(argv)
    _require_workdir()
    config = _config()
    from selfcompress import training
    training.train_and_evaluate(config, FLAGS.workdir,
                                extend_epochs=FLAGS.extend_epochs)
  _run(main)


def imp():
  """Iterative magnitude pruning with rewinding; run again to resume."""
  _common_flags()

  def main(argv):
    _no_args(argv)
    _require_workdir()
    config = _config()
    from selfcompress import imp as imp_lib
    imp_lib.run(config, FLAGS.workdir)
  _run(main)


def sweep():
  """Runs a config over several gammas and seeds and draws the Pareto plot."""
  _common_flags()
  flags.DEFINE_list("gammas", ["0.003", "0.01", "0.03", "0.1", "0.3", "1.0"],
                    "Size-penalty weights to sweep.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; each gamma is run once per seed.")
  flags.DEFINE_bool("dense", True, "Also train the dense float32 baseline.")

  def main(argv):
    _no_args(argv)
    _require_workdir()
    config = _config()
    from selfcompress import sweep as sweep_lib
    try:
      gammas = [float(g) for g in FLAGS.gammas]
      seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as e:
      _fail(f"--gammas takes numbers, --seeds integers: {e}")
    sweep_lib.run_sweep(config, FLAGS.workdir, gammas, seeds,
                        dense=FLAGS.dense)
  _run(main)


def compare():
  """Every method side by side on one size budget; run again to resume."""
  config_flags.DEFINE_config_file(
      "sc_config", "configs/mnist_lenet300.py", "Self-compression config "
      "(override fields with --sc_config.FIELD=VALUE).", lock_config=True)
  config_flags.DEFINE_config_file(
      "imp_config", "configs/mnist_lenet300_imp.py", "IMP config "
      "(--imp_config.FIELD=VALUE).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Root folder of all runs; run the same "
                      "command again to resume.")
  flags.DEFINE_string("data_dir", None, "The dataset's folder (both configs' "
                      "data_dir).")
  flags.DEFINE_float("budget_kb", 8.0, "Size budget (KB, 1 KB = 1000 bytes): "
                     "the self-compression runs' target_kb and IMP's limit.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.")
  flags.DEFINE_list(
      "methods", ["sc:bits", "sc:bits_entropy", "sc:inputs_bits_entropy",
                  "dense_final", "imp:init", "imp:lr_rewind", "gmp"],
      "Methods, run in this order for each seed: sc:VARIANT (bits, "
      "bits_entropy, gates_bits_entropy, inputs_bits_entropy), imp:RESET "
      "(init, rewind, lr_rewind, finetune), gmp (gradual magnitude "
      "pruning in one run), dense_final.")
  flags.DEFINE_string("final_from", "sc:inputs_bits_entropy", "The "
                      "self-compression method whose final architecture "
                      "dense_final trains from scratch.")

  def main(argv):
    _no_args(argv)
    _require_workdir()
    try:
      seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as e:
      _fail(f"--seeds takes integers: {e}")
    if not FLAGS.budget_kb > 0:
      _fail(f"--budget_kb must be > 0, got {FLAGS.budget_kb}.")
    from selfcompress import compare as compare_lib
    compare_lib.run(FLAGS.methods, seeds, FLAGS.budget_kb, FLAGS.workdir,
                    sc_config=FLAGS.sc_config, imp_config=FLAGS.imp_config,
                    final_from=FLAGS.final_from, data_dir=FLAGS.data_dir)
  _run(main, with_config=False)


def _workdir_data():
  """The datasets of the run in --workdir, as its config.json describes."""
  from selfcompress import data, workdir
  config = workdir.recorded(FLAGS.workdir)
  if config is None:
    _fail(f"{FLAGS.workdir} has no config.json, so its data is unknown; pass "
          "--model=FILE.keras (and --representative_data) instead.")
  return data.from_config(
      dict(config, data_dir=FLAGS.data_dir or config["data_dir"]))


def _load_npy(path):
  import numpy as np
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    _fail(f"--representative_data={path} is not a readable .npy array of "
          f"inputs ({e}).")


def export():
  """Exports a trained model (a workdir's model.keras, or any .keras file)."""
  flags.DEFINE_string("workdir", None, "A tools/train.py workdir (uses its "
                      "model.keras, and its config's data for calibration "
                      "and test accuracy).")
  flags.DEFINE_string("model", None, "A .keras file (instead of --workdir).")
  flags.DEFINE_string("output", None, "The SavedModel folder, .tflite or "
                      ".keras file.")
  flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite", "keras"],
                    "Export format.")
  flags.DEFINE_enum("litert_weights", "codes", ["codes", "float32", "float16"],
                    "With --format=tflite: the learned integer codes, or "
                    "float weights (see selfcompress.export).")
  flags.DEFINE_enum("litert_compute", "float", ["float", "dynamic", "integer"],
                    "With --format=tflite: float (exact), dynamic (integer-"
                    "weight kernels) or integer (full-integer, int8 "
                    "activations calibrated on training inputs).")
  flags.DEFINE_string("representative_data", None, "For --litert_compute="
                      "integer with --model: a .npy file of training inputs "
                      "(with --workdir, its config's training data is used).")
  flags.DEFINE_string("data_dir", None, "With --workdir: where its dataset "
                      "is now, if not where the run read it.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export.")

  def main(argv):
    _no_args(argv)
    if bool(FLAGS.workdir) == bool(FLAGS.model):
      _fail("Give exactly one of --workdir and --model.")
    if not FLAGS.output:
      _fail("--output is required: the SavedModel folder, .tflite or .keras "
            "file to write.")
    path = FLAGS.model or os.path.join(FLAGS.workdir, "model.keras")
    if not os.path.exists(path):
      _fail(
          f"{path} does not exist. A workdir has model.keras once "
          "tools/train.py has finished; otherwise pass --model=FILE.keras.")
    if FLAGS.format != "tflite" and (FLAGS["litert_weights"].present
                                     or FLAGS["litert_compute"].present):
      _fail("--litert_weights and --litert_compute apply to --format=tflite.")
    if FLAGS.output and os.path.exists(FLAGS.output) and not FLAGS.overwrite:
      _fail(f"--output={FLAGS.output} exists. Pass --overwrite to replace "
            "it, or choose another --output.")
    import selfcompress as sc
    from selfcompress import litert
    datasets = _workdir_data() if FLAGS.workdir and FLAGS.format == "tflite" else None
    representative = None
    if FLAGS.litert_compute == "integer":
      if FLAGS.representative_data:
        representative = _load_npy(FLAGS.representative_data)
      elif datasets is not None:
        representative = datasets.train
      else:
        _fail("--litert_compute=integer calibrates on training inputs: pass "
              "--workdir (its config's data), or --representative_data="
              "FILE.npy with --model.")
    model = sc.load_model(path)
    try:
      report = sc.export(
          model, FLAGS.output, format=FLAGS.format, overwrite=FLAGS.overwrite,
          **(dict(litert_weights=FLAGS.litert_weights,
                  litert_compute=FLAGS.litert_compute,
                  representative_data=representative)
             if FLAGS.format == "tflite" else {}))
    except FileExistsError:
      _fail(f"--output={FLAGS.output} exists. Pass --overwrite to replace "
            "it, or choose another --output.")
    print(report)  # a table: weights, graph, whole export, dense, accounting
    if datasets is not None:
      print("Test accuracy: this file "
            f"{100 * litert.accuracy(litert.Runner(FLAGS.output), datasets.test):.2f}%, "
            "the trained model "
            f"{100 * litert.accuracy(lambda x: model(x, training=False), datasets.test):.2f}% "
            f"({datasets.num_test:,} test examples, {datasets.name}).")
  _run(main, with_config=False)
