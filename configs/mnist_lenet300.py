"""LeNet-300-100 (784-300-100-10) on MNIST, self-compressing.

  python tools/train.py --config=configs/mnist_lenet300.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/mnist_lenet300

5,000 training images are held out for validation (as in the lottery-ticket
work); the test set is the official 10,000. About 1.5 minutes on 2 CPU cores.
Expected (gamma 0.01, seed 0): see BENCHMARKS.md, "MNIST" (about 98% at
about 20-25 KB; the dense float32 model is 1,066 KB at about 98.2%).
Baseline: add `--config.method=dense`. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "mnist"
  c.model = "lenet300"
  c.epochs = 30
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.01
  return base.apply_arg(c, arg)
