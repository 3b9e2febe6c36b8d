r"""Iterative magnitude pruning with rewinding (logic: `selfcompress.imp`).

  python tools/imp.py --config=configs/mnist_lenet300_imp.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/imp_l300
  python tools/imp.py --config=configs/mnist_lenet300_imp.py \
      --config.data_dir=../shared/data/mnist --config.imp.reset=lr_rewind \
      --workdir=/tmp/imp_l300_lrr

Run the same command again to resume: finished levels are skipped.
"""

from selfcompress import cli

if __name__ == "__main__":
  cli.imp()
