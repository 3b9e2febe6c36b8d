"""LeNet-5 on Fashion-MNIST (`configs/fashion_lenet5.py`), trained dense and
pruned by iterative magnitude pruning: the IMP side of the Fashion-MNIST
comparison in BENCHMARKS.md (`tools/bench_methods.py`).

  python tools/imp.py --config=configs/fashion_lenet5_imp.py \
      --config.data_dir=../shared/data/fashion-mnist --workdir=/tmp/imp_fashion_lenet5

Same data, model, optimizer and batch as the self-compression config. Each
level removes half of each layer's remaining weights by magnitude (the
output layer a quarter, `imp.output_rate` 0.5) and rewinds the rest to their
initial values, as Frankle & Carbin ("The Lottery Ticket Hypothesis", ICLR
2019) do for their small convolutional networks; 6 levels leave 1.6% of the
weights. Each level trains 10 epochs instead of the self-compression run's
20, so that IMP's seven trainings fit a 2-core CPU; level 0 is the dense
baseline. `:smoke` shrinks it to seconds.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.beside(__file__, "fashion_lenet5.py", arg)
  c.method = "dense"
  c.epochs = min(c.epochs, 10)
  c.imp.levels = min(c.imp.levels, 6)
  c.imp.fraction = 0.5
  c.imp.output_rate = 0.5
  c.imp.reset = "init"
  return c
