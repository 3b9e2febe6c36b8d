"""ResNet-20 on Fashion-MNIST (`configs/fashion_resnet20.py`), trained dense
and pruned by iterative magnitude pruning with rewinding: the IMP side of
the ResNet benchmark in BENCHMARKS.md.

  python tools/imp.py --config=configs/fashion_resnet20_imp.py \
      --config.data_dir=/tmp/fashion_npz --workdir=/tmp/imp_resnet20

Same data, augmentation, optimizer and schedule as the self-compression
config. Each level removes half of each layer's remaining weights by
magnitude (the output layer a quarter, `imp.output_rate` 0.5) and rewinds the rest to their values
after epoch 1 (Frankle et al., "Linear Mode Connectivity and the Lottery
Ticket Hypothesis", ICML 2020: rewinding to iteration 0 fails on deeper
networks); 4 levels leave 6.25% of the weights. Level 0 is the dense
baseline. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.beside(__file__, "fashion_resnet20.py", arg)
  c.method = "dense"
  c.gamma = 0.05
  c.imp.levels = min(c.imp.levels, 4)
  c.imp.fraction = 0.5
  c.imp.reset = "rewind"
  c.imp.rewind_epoch = 1
  return c
