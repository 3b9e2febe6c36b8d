"""Self-compression and IMP side by side: same model, same data.

Trains (or, if their workdirs are finished, reads) a self-compression run
and an IMP run, picks the sparsest IMP level whose best validation accuracy
is within `--tolerance` of the dense level's (validation only, never test),
finds the fewest uniform bits that level tolerates on validation, and prints
test accuracy, size and training wall time with the ratios to
self-compression. IMP sizes: kept weights x 32 bits (or x the uniform bits,
plus one float32 scale per kernel) plus relative-index overhead plus float32
biases (`selfcompress.pruning.sparse_size`).

  python tools/bench_imp.py --data_dir=../shared/data/mnist \
      --sc_workdir=/tmp/sc_l300 --imp_workdir=/tmp/imp_l300
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from selfcompress import data, imp, pruning, training  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "sc_config", "configs/mnist_lenet300.py", "Self-compression config.")
config_flags.DEFINE_config_file(
    "imp_config", "configs/mnist_lenet300_imp.py", "IMP config.")
flags.DEFINE_string("data_dir", None, "Folder with the MNIST IDX .gz files.")
flags.DEFINE_string("sc_workdir", None, "Self-compression workdir.")
flags.DEFINE_string("imp_workdir", None, "IMP workdir.")
flags.DEFINE_integer("seed", 0, "Seed of both runs.")
flags.DEFINE_float("tolerance", 0.2, "Accuracy points a smaller IMP level "
                   "or fewer bits may lose on validation.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sc_config, imp_config = FLAGS.sc_config, FLAGS.imp_config
  for c in (sc_config, imp_config):
    c.data_dir, c.seed, c.verbose = FLAGS.data_dir, FLAGS.seed, 0
  sc = training.train_and_evaluate(sc_config, FLAGS.sc_workdir)
  rows = imp.run(imp_config, FLAGS.imp_workdir)
  tolerance = FLAGS.tolerance / 100
  dense = rows[0]
  chosen = [r for r in rows if r["best_val_accuracy"] >=
            dense["best_val_accuracy"] - tolerance][-1]
  ds = data.from_config(imp_config, first_epoch=0)
  model = imp.load_level(imp_config, ds, FLAGS.imp_workdir, chosen["level"])
  float_size = pruning.sparse_size(model)
  bits, _ = imp.tolerated_bits(model, ds.validation, tolerance)
  quantized_test = model.evaluate(ds.test, return_dict=True,
                                  verbose=0)["accuracy"]
  quantized_size = pruning.sparse_size(model, value_bits=bits)
  imp_seconds = sum(r["train_seconds"] for r in rows[:chosen["level"] + 1])
  table = [
      ("dense (IMP level 0)", dense["test_accuracy"], float_size.float_bits,
       dense["train_seconds"]),
      ("self-compression", sc["test_accuracy"], sc["size_kb"] * 8000,
       sc["train_seconds"]),
      (f"IMP level {chosen['level']}, float32", chosen["test_accuracy"],
       float_size.bits, imp_seconds),
      (f"IMP level {chosen['level']}, {bits} bits", quantized_test,
       quantized_size.bits, imp_seconds),
  ]
  sc_bits, sc_seconds = sc["size_kb"] * 8000, sc["train_seconds"]
  print(f"\nIMP level {chosen['level']}: {100 * chosen['density']:.2f}% of "
        f"weights ({chosen['weights_remaining']:,}), chosen on validation "
        f"({100 * chosen['best_val_accuracy']:.2f}% vs dense "
        f"{100 * dense['best_val_accuracy']:.2f}%); {bits} bits tolerated. "
        f"Index overhead: {float_size.index / 8000:.2f} KB at float32, "
        f"{quantized_size.index / 8000:.2f} KB at {bits} bits.")
  print("| method | test acc | size KB | vs float32 | size / SC | train s "
        "| time / SC |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, acc, bits_, seconds in table:
    print(f"| {name} | {100 * acc:.2f}% | {bits_ / 8000:.2f} | "
          f"{float_size.float_bits / bits_:.1f}x | {bits_ / sc_bits:.2f} | "
          f"{seconds:.0f} | {seconds / sc_seconds:.2f} |")


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir", "sc_workdir", "imp_workdir"])
  app.run(main)
