"""LeNet-300-100 (784-300-100-10) on MNIST, self-compressing.

  python tools/train.py --config=configs/mnist_lenet300.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/mnist_lenet300

5,000 training images are held out for validation (as in the lottery-ticket
work); the test set is the official 10,000. About 3 minutes on 2 CPU cores.

Defaults: an 8 KB budget (`target_kb`, which adapts gamma from its start of
0.1), learned weight-level sparsity inside alive channels (`sparse_bits`)
and entropy-coded storage, a cosine learning rate, and training images
shifted at random by up to 1 pixel (`random_crop_padding=1`). Expected
(measured 2026-12-03, this config at its defaults, `--config.seed=S`):
98.17 +- 0.17% test accuracy over seeds 0-2 (97.98, 98.27, 98.27) at
7.898-7.998 KB, about 134x smaller than float32. Without the shifts
(`--config.random_crop_padding=0`): 97.88 +- 0.20% at 7.996 KB.
The dense baseline (`--config=configs/mnist_lenet300.py:dense`) reached
98.20% at 1,066 KB (2026-11-20, without shifts).

Each choice was made on validation accuracy (mean of seeds 0-2 unless
stated): the shifts (98.10% vs 97.45%; 2 pixels underfit: 96.98%, seed 0),
`sparse_bits` over `bits` (97.45% vs 97.23%), the cosine schedule (97.42%
vs 97.02% constant, at gamma 0.1, seed 0). `inputs+sparse_bits` was within
the seeds' spread of `sparse_bits` (97.54%) at 1.9x the training time;
60 epochs, a starting gamma of 0.01 or a learning rate of 2e-3 did not help
(seed 0). Curves and the steps: BENCHMARKS.md. `:smoke` shrinks it to
seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "mnist"
  c.model = "lenet300"
  c.epochs = 30
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.1  # the start: target_kb adapts it
  c.lr_schedule = "cosine"
  c.target_kb = 8.0
  c.compressor = "sparse_bits"
  c.storage = "entropy"
  # Random shifts of up to 1 pixel (pad 1, crop 28x28): chosen on
  # validation, 98.10% against 97.45% without (mean of 3 seeds).
  c.random_crop_padding = 1
  return base.apply_arg(c, arg)
