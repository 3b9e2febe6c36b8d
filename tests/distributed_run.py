"""Runs `train_and_evaluate` for the distribution tests, in its own process
(a strategy's devices and cluster are fixed when TensorFlow starts).

  python distributed_run.py '[["workdir", {"strategy": "mirrored", ...}], ...]'

Prints one `RESULT {json}` line per run, with its history.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from selfcompress import config as config_lib  # noqa: E402
from selfcompress import training  # noqa: E402


def main(runs):
  for workdir, overrides in runs:
    config = config_lib.base()
    config.update(overrides)
    results = training.train_and_evaluate(config, workdir)
    history = []
    path = os.path.join(workdir, "metrics.json")
    if os.path.exists(path):
      with open(path) as f:
        history = json.load(f)
    print("RESULT " + json.dumps({"results": results, "history": history}),
          flush=True)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
