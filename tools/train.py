r"""Trains and evaluates one config (logic: `selfcompress.training`).

  python tools/train.py --config=configs/default.py --workdir=/tmp/run
  python tools/train.py --config=configs/mnist_lenet300.py \
      --config.data_dir=../shared/data/mnist --config.gamma=0.1 --workdir=/tmp/l300

Run the same command again to resume an interrupted run.
"""

from selfcompress import cli

if __name__ == "__main__":
  cli.train()
