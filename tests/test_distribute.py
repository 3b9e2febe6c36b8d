"""Training under tf.distribute: mirrored and multi-worker on this CPU.

A strategy's devices and cluster are fixed when TensorFlow starts, so each
run is a fresh process (`distributed_run.py`), bounded in time.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from selfcompress import config as config_lib
from selfcompress import data, distribute, imp, pruning, training
from selfcompress import errors as sc_errors

RUNNER = os.path.join(os.path.dirname(__file__), "distributed_run.py")
SMALL = {"max_train_examples": 512, "batch_size": 64, "epochs": 3,
         "verbose": 0, "gamma": 0.5}


def _launch(runs, env=None, log=None):
  return subprocess.Popen(
      [sys.executable, RUNNER, json.dumps(runs)],
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
      stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _results(output):
  lines = [l for l in output.splitlines() if l.startswith("RESULT ")]
  return [json.loads(l[len("RESULT "):]) for l in lines]


def _run(runs, timeout=600):
  proc = _launch(runs)
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  assert proc.returncode == 0, out[-3000:]
  return _results(out), out


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _workers(workdir, overrides, ports, logs):
  return [_launch([[workdir, {**overrides, "strategy": "multi_worker"}]],
                  env={"TF_CONFIG": distribute.tf_config_for(ports, i)},
                  log=logs[i])
          for i in range(len(ports))]


def _finish(procs, timeout):
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.time(), 1))
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs]


def _trajectory(history, key):
  return np.array([r[key] for r in history])


def test_bad_strategy_values_are_named():
  config = config_lib.base()
  config.strategy = "horovod"
  with pytest.raises(ValueError, match="strategy='horovod'"):
    training.validate(config)
  config.strategy = "multi_worker"
  env = os.environ.pop("TF_CONFIG", None)
  try:
    with pytest.raises(ValueError, match="TF_CONFIG"):
      distribute.make(config)
  finally:
    if env is not None:
      os.environ["TF_CONFIG"] = env
  config.strategy, config.tpu_address = "tpu", ""
  with pytest.raises(sc_errors.ConfigError, match="could not reach a TPU"):
    distribute.make(config)


def test_mirrored_follows_one_device_and_sheds(tmp_path):
  """Two logical CPUs, the same global batch: the loss and size trajectories
  match one device; with shedding on, the mirrored model shrinks."""
  runs = [
      [str(tmp_path / "one"), {**SMALL, "cpu_devices": 2}],
      [str(tmp_path / "two"), {**SMALL, "cpu_devices": 2,
                               "strategy": "mirrored"}],
      [str(tmp_path / "shed"), {**SMALL, "cpu_devices": 2, "gamma": 2.0,
                                "batch_size": 16, "epochs": 4,
                                "strategy": "mirrored",
                                "shed_every_epochs": 1}],
  ]
  (one, two, shed), out = _run(runs)
  for key in ("loss", "size_kb"):
    np.testing.assert_allclose(_trajectory(two["history"], key),
                               _trajectory(one["history"], key),
                               rtol=2e-3, err_msg=key)
  assert len(shed["history"]) == 4
  assert "shed after epoch" in out  # the mirrored model was swapped
  shed_model, full_model = (keras.models.load_model(tmp_path / d / "model.keras")
                            for d in ("shed", "one"))
  assert shed_model.count_params() < full_model.count_params() / 2
  assert shed["results"]["test_accuracy"] > 0.5


def test_imp_under_mirrored_follows_one_device(tmp_path):
  """IMP's levels (masks in variables, kept at zero by the constraint) run
  under the config's strategy, as training does."""
  base = {**SMALL, "tool": "imp", "method": "dense", "cpu_devices": 2,
          "epochs": 2, "imp": {"levels": 2}}
  (one, two), out = _run([[str(tmp_path / "one"), base],
                          [str(tmp_path / "two"), {**base, "strategy": "mirrored"}]])
  assert "MirroredStrategy with 2 replica(s)" in out
  assert [r["weights_remaining"] for r in two["results"]] == \
      [r["weights_remaining"] for r in one["results"]]
  assert two["results"][-1]["density"] < 0.7
  np.testing.assert_allclose(_trajectory(two["history"], "loss"),
                             _trajectory(one["history"], "loss"), rtol=2e-3)
  # The mirrored level's pruned weights stayed exactly zero.
  config = config_lib.base()
  config.update({k: v for k, v in base.items() if k not in ("tool", "imp")})
  config.imp.levels = 2
  ds = data.load(config.dataset, batch_size=config.batch_size,
                 max_train_examples=config.max_train_examples)
  model = imp.load_level(config, ds, str(tmp_path / "two"), 2)
  mask, kernels = pruning.mask_of(model), pruning.kernels(model)
  for path, keep in mask.items():
    assert np.all(kernels[path][keep == 0] == 0), path
  config.strategy = "multi_worker"
  with pytest.raises(ValueError, match="IMP reads each level"):
    imp.validate(config)


def test_two_workers_agree_with_each_other_and_one_worker(tmp_path):
  ports = _free_ports(2)
  logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
  procs = _workers(str(tmp_path / "multi"), SMALL, ports, logs)
  codes = _finish(procs, timeout=600)
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
  assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  chief, other = (_results(o)[0] for o in outputs)
  assert (chief["results"]["weights_sha256"]
          == other["results"]["weights_sha256"])
  (single,), _ = _run([[str(tmp_path / "single"), SMALL]])
  for key in ("loss", "size_kb"):
    np.testing.assert_allclose(_trajectory(chief["history"], key),
                               _trajectory(single["history"], key),
                               rtol=2e-3, err_msg=key)
  assert os.path.exists(tmp_path / "multi" / "results.json")  # the chief's


def test_a_killed_worker_is_restarted_and_the_run_completes(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = {**SMALL, "epochs": 4}
  ports = _free_ports(2)
  logs = [open(tmp_path / f"first{i}.log", "w+") for i in range(2)]
  procs = _workers(workdir, overrides, ports, logs)
  state = os.path.join(workdir, "checkpoints", "state.json")
  deadline = time.time() + 300
  while not os.path.exists(state) and time.time() < deadline:
    assert all(p.poll() is None for p in procs), "a worker died on its own"
    time.sleep(0.2)
  assert os.path.exists(state), "no checkpoint was written"
  procs[1].send_signal(signal.SIGKILL)
  # The survivor cannot go on without its peer: it fails, or the cluster
  # manager (here, this test) stops it. Then the job is restarted.
  _finish(procs, timeout=60)
  with open(state) as f:
    done = json.load(f)["epoch"]
  assert done < overrides["epochs"]
  logs = [open(tmp_path / f"second{i}.log", "w+") for i in range(2)]
  procs = _workers(workdir, overrides, ports=_free_ports(2), logs=logs)
  assert _finish(procs, timeout=600) == [0, 0]
  results = []
  for log in logs:
    log.seek(0)
    results.append(_results(log.read())[0])
  assert results[0]["results"]["weights_sha256"] == \
      results[1]["results"]["weights_sha256"]
  epochs = [r["epoch"] for r in results[0]["history"]]
  assert epochs == list(range(1, overrides["epochs"] + 1))  # nothing lost
