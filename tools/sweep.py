r"""Sweeps gamma for one config and draws the accuracy-vs-size Pareto plot,
with the dense float32 baseline and published anchors (logic:
`selfcompress.sweep`).

  python tools/sweep.py --config=configs/mnist_lenet300.py \
      --config.data_dir=../shared/data/mnist --workdir=/tmp/sweep_l300 \
      --gammas=0.003,0.01,0.03,0.1,0.3,1.0 --seeds=0

Interrupted sweeps resume: finished runs are skipped.
"""

from selfcompress import cli

if __name__ == "__main__":
  cli.sweep()
