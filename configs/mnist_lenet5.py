"""LeNet-5 (conv 20 and 50 filters of 5x5, fc 500, fc 10) on MNIST.

  python tools/train.py --config=configs/mnist_lenet5.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/mnist_lenet5

5,000 training images held out for validation; the official 10,000 for test.
About 8 minutes on 2 CPU cores.

Defaults: a 2.8 KB budget (`target_kb`, which adapts gamma from its start
of 0.1 at `target_rate` 0.001 per step), learned weight-level sparsity
inside alive channels (`sparse_bits`) with entropy-coded storage, a cosine
learning rate. Expected (measured 2026-12-03, this config at its defaults,
`--config.seed=S`): 99.00 +- 0.08% test accuracy over seeds 0-2 (99.10,
98.95, 98.96) at 2.798 KB each, 616x smaller than float32; the dense
baseline (`--config=configs/mnist_lenet5.py:dense`) reached 99.30% at
1,724 KB (2026-11-21, at a constant learning rate).

Each choice was made on validation accuracy: `target_rate` 0.001 over 0.002
(98.71% vs 98.63%, mean of seeds 0-2: the budget is first reached at epoch
8-13 instead of 4; 0.002 scored 98.94% test), the cosine schedule (98.80% vs
98.64% constant, seed 0). Per-input gates (`inputs+sparse_bits`, 98.70%),
random shifts (98.36%) and 30 epochs (98.58%) did not help (seed 0).
Curves: BENCHMARKS.md. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "mnist"
  c.model = "lenet5"
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.gamma = 0.1  # the start: target_kb adapts it
  c.lr_schedule = "cosine"
  c.target_kb = 2.8
  c.target_rate = 0.001
  c.compressor = "sparse_bits"
  c.storage = "entropy"
  return base.apply_arg(c, arg)
