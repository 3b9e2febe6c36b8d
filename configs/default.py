"""Default: an MLP on the 8x8 handwritten digits bundled with scikit-learn.

Runs offline, in about 30 seconds on 2 CPU cores:

  python tools/train.py --config=configs/default.py --workdir=/tmp/selfcompress-default

Expected (seed 0, measured 2026-11-20 from a fresh install): 96.7% test
accuracy on the 360 test digits at 1.95 KB, 23.3x smaller than the 45.5 KB
float32 model. `:smoke` runs
2 epochs on 512 examples.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "digits"
  c.model = "mlp"
  c.model_kwargs.hidden = (96, 48)
  c.epochs = 60
  c.batch_size = 32
  c.learning_rate = 2e-3
  c.gamma = 0.05
  return base.apply_arg(c, arg)
