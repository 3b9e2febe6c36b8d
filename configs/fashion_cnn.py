"""A small Conv-BN-ReLU CNN (32 and 64 filters, fc 128) on Fashion-MNIST.

  python tools/train.py --config=configs/fashion_cnn.py \
      --config.data_dir=../shared/data/fashion-mnist --workdir=/tmp/fashion_cnn

5,000 training images held out for validation; the official 10,000 for test.
About 10 minutes on 2 CPU cores. Baseline: `--config.method=dense`.
`:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "fashion_mnist"
  c.model = "convnet"
  c.model_kwargs.filters = (32, 64)
  c.model_kwargs.dense = 128
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.01
  return base.apply_arg(c, arg)
