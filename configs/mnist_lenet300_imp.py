"""LeNet-300-100 on MNIST, iterative magnitude pruning (lottery ticket).

  python tools/imp.py --config=configs/mnist_lenet300_imp.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/imp_l300

The setup of Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding
Sparse, Trainable Neural Networks" (ICLR 2019): Adam 1.2e-3, batch 60,
Glorot normal init, 5,000 training images held out for validation,
layer-wise magnitude pruning of 20% per level (output layer 10%), kept
weights rewound to their initial values. 15 levels leave 3.6% of the
weights. The paper trains 50,000 iterations per level; this config trains
6 epochs (5,502 iterations) per level to fit a 2-core CPU: 20-45 s a level
on one shared core, 11 minutes for all 16. Expected (seed 0, measured
2026-11-21): test accuracy at the best-validation epoch 97.54% dense,
98.19% at 3.6% of the weights; the re-initialised control 97.11% there. Other resets: `--config.imp.reset=lr_rewind`,
`rewind`, `finetune`; the random re-initialisation control is
`--config.imp.reset=reinit --config.imp.mask_from=<a reset=init workdir>`.
Results: BENCHMARKS.md. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.method = "dense"
  c.dataset = "mnist"
  c.model = "lenet300"
  c.model_kwargs.kernel_initializer = "glorot_normal"
  c.epochs = 6
  c.batch_size = 60
  c.learning_rate = 1.2e-3
  c.lr_schedule = "constant"
  c.imp.levels = 15
  c.imp.fraction = 0.2
  c.imp.strategy = "layerwise_magnitude"
  c.imp.output_rate = 0.5
  c.imp.reset = "init"
  return base.apply_arg(c, arg)
