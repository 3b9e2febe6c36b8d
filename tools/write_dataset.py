r"""Writes MNIST, Fashion-MNIST or the 8x8 digits as a Keras-style `.npz` file
or as a folder of PNGs, to train on through the file sources of a config
(`dataset="npz:FILE.npz"` or `"images:FOLDER"`; README, "Your own model and
data").

  python tools/write_dataset.py --dataset=fashion_mnist \
      --data_dir=../shared/data/fashion-mnist \
      --output=/tmp/fashion_npz/fashion_mnist.npz
  python tools/write_dataset.py --dataset=fashion_mnist \
      --data_dir=../shared/data/fashion-mnist --format=images \
      --output=/tmp/fashion_png

The `.npz` holds `x_train`, `y_train`, `x_test`, `y_test` (uint8 images N x H
x W, int64 labels), as `keras.datasets` caches them. The image folder is
`train/<label>/<index>.png` and `test/<label>/<index>.png` (grayscale: train
on it with `--config.color_mode=grayscale`), the layout of
`keras.utils.image_dataset_from_directory`. Either is written to a temporary
file or folder and renamed into place.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "fashion_mnist",
                  ["mnist", "fashion_mnist", "digits"], "The dataset to write.")
flags.DEFINE_string("data_dir", None, "Folder of its IDX .gz files (None: the "
                    "Keras cache folder; ignored for digits).")
flags.DEFINE_bool("verify_checksums", True,
                  "Check the SHA-256 of the IDX files.")
flags.DEFINE_enum("format", "npz", ["npz", "images"],
                  "A .npz file, or a folder of PNGs.")
flags.DEFINE_string("output", None,
                    "The .npz file, or the image folder, to write.")
flags.DEFINE_integer("max_examples", 0, "Write the first N examples of each "
                     "split; 0: all.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    _fail(f"Unexpected arguments: {argv[1:]}. Flags take the form "
          "--name=value.")
  if not FLAGS.output:
    _fail("--output is required: the .npz file or image folder to write.")
  if FLAGS.format == "npz" and not FLAGS.output.endswith(".npz"):
    _fail(f"--output={FLAGS.output}: a --format=npz file must end in .npz.")
  if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
    _fail(f"--output={FLAGS.output} exists. Pass --overwrite to replace it, "
          "or choose another --output.")
  if FLAGS.max_examples < 0:
    _fail(f"--max_examples={FLAGS.max_examples}: must be >= 0 (0: all).")
  from selfcompress import data, errors, sources
  try:
    arrays = data.load_arrays(FLAGS.dataset, FLAGS.data_dir,
                              verify_checksums=FLAGS.verify_checksums)
  except errors.UserError as e:
    _fail(str(e))
  if FLAGS.max_examples:
    arrays = {k: v[:FLAGS.max_examples] for k, v in arrays.items()}
  if FLAGS.format == "npz":
    sources.write_npz(arrays, FLAGS.output)
  else:
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    sources.write_image_folder(arrays, FLAGS.output, num_classes)
  height, width = arrays["x_train"].shape[1:]
  print(f"Wrote {len(arrays['x_train']):,} training and "
        f"{len(arrays['x_test']):,} test images ({height}x{width}, "
        f"{FLAGS.dataset}) to {FLAGS.output}.")


if __name__ == "__main__":
  app.run(main)
