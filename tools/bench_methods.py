r"""Every compression method side by side on one size budget (logic:
`selfcompress.compare`): self-compression variants, IMP with its resets
(quantized as well), gradual magnitude pruning in one run (`gmp`), and the
dense control trained at the architecture self-compression found. Same data, seeds and size rule; mean and standard
deviation over seeds, training wall time against IMP's; writes
`results.json`, `results.md` and `pareto.png` (with published results) to
`--workdir`. Run the same command again to resume.

  python tools/bench_methods.py --data_dir=../shared/data/mnist \
      --workdir=/tmp/bench_lenet300 --budget_kb=8 --seeds=0,1,2
"""

from selfcompress import cli

if __name__ == "__main__":
  cli.compare()
