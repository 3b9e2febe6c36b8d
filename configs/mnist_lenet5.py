"""LeNet-5 (conv 20 and 50 filters of 5x5, fc 500, fc 10) on MNIST.

  python tools/train.py --config=configs/mnist_lenet5.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/mnist_lenet5

5,000 training images held out for validation; the official 10,000 for test.
About 3 minutes on 2 CPU cores. Expected (gamma 0.1, seed 0, measured
2026-11-21): 99.16% test accuracy at 7.73 KB, 223x smaller than float32
(98.98% at 7.40 KB on 2026-11-20, when LeNet-5 still trained under XLA); the
dense baseline (`--config.method=dense`) reaches 99.30% at 1,724 KB. gamma
0.1 was picked on validation accuracy (98.78%, vs 98.86% for gamma 0.01 at
2.3x the size). Curve: BENCHMARKS.md. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "mnist"
  c.model = "lenet5"
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.1
  return base.apply_arg(c, arg)
