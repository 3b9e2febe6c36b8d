"""LeNet-5 (conv 20 and 50 filters of 5x5, fc 500, fc 10) on Fashion-MNIST.

  python tools/train.py --config=configs/fashion_lenet5.py \
      --config.data_dir=../shared/data/fashion-mnist --workdir=/tmp/fashion_lenet5

The MNIST LeNet-5 recipe (`mnist_lenet5.py`, gamma 0.1) on Fashion-MNIST,
for comparing compressors (`--config.compressor=bits|gates|gates+bits`) on a
network without BatchNorm: a BatchNorm after a gated layer would undo the
gate's scaling in training (README, "Choosing gates or bits"). 5,000
training images held out for validation; the official 10,000 for test.
About 2.5 minutes on 2 CPU cores. Expected (seed 0, 20 epochs, measured
2026-11-21): 91.03% test accuracy at 197 KB with gates, 90.33% at 16.9 KB
with bits, 90.36% at 17.1 KB with gates+bits; dense 91.19% (BENCHMARKS.md,
issue 8).
`:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "fashion_mnist"
  c.model = "lenet5"
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.1
  return base.apply_arg(c, arg)
