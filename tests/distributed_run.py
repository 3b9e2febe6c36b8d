"""Runs `train_and_evaluate` (or, with `"tool": "imp"`, `imp.run`) for the
distribution tests, in its own process (a strategy's devices and cluster are
fixed when TensorFlow starts).

  python distributed_run.py '[["workdir", {"strategy": "mirrored", ...}], ...]'

Prints one `RESULT {json}` line per run: the results with the history (of
IMP's last level).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import logging  # noqa: E402

from selfcompress import config as config_lib  # noqa: E402
from selfcompress import imp, training  # noqa: E402


def main(runs):
  logging.set_verbosity(logging.INFO)  # e.g. the strategy in use
  for workdir, overrides in runs:
    config = config_lib.base()
    overrides = dict(overrides)
    tool = overrides.pop("tool", "train")
    config.imp.update(overrides.pop("imp", {}))
    config.update(overrides)
    history = []
    path = os.path.join(workdir, "metrics.json")
    if tool == "imp":
      results = imp.run(config, workdir)
      path = os.path.join(workdir, f"level_{config.imp.levels:02d}",
                          "metrics.json")
    else:
      results = training.train_and_evaluate(config, workdir)
    if os.path.exists(path):
      with open(path) as f:
        history = json.load(f)
    print("RESULT " + json.dumps({"results": results, "history": history}),
          flush=True)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
