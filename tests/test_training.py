"""train_and_evaluate, configs and resume, on generated MNIST-format files."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from selfcompress import training
from test_data import write_dataset_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def fake_mnist(directory, n_train=700, n_test=200, seed=0):
  """MNIST-format IDX files whose digits are a learnable bright bar."""
  rng = np.random.default_rng(seed)
  def split(n):
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
      x[i, 2 + 2 * label:4 + 2 * label, 4:24] = 255
    return x, y
  x_train, y_train = split(n_train)
  x_test, y_test = split(n_test)
  write_dataset_dir(directory, dict(x_train=x_train, y_train=y_train,
                                    x_test=x_test, y_test=y_test))
  return str(directory)


def smoke_config(data_dir, **overrides):
  config = load_config(os.path.join(REPO, "configs", "mnist_lenet300.py"),
                       "smoke")
  config.data_dir = data_dir
  config.verify_checksums = False
  # Tests resume runs with a larger `epochs`, which a cosine schedule
  # (fixed by the run's length) does not allow.
  config.lr_schedule = "constant"
  config.num_validation = 100
  config.verbose = 0
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_configs_load_and_validate(path):
  for arg in (None, "smoke"):
    config = load_config(path, arg)
    training.validate(config)
    assert config.epochs >= 1
  tool = "imp" if path.endswith("_imp.py") else "train"
  assert f"python tools/{tool}.py --config=configs/" in open(path).read()


def test_smoke_run_writes_the_whole_workdir(tmp_path):
  data_dir = fake_mnist(tmp_path / "data")
  workdir = str(tmp_path / "run")
  results = training.train_and_evaluate(smoke_config(data_dir), workdir)
  for name in ("config.json", "metrics.csv", "metrics.json", "size.json",
               "size.txt", "model.keras", "training.png", "results.json",
               "checkpoints/state.json", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  history = json.load(open(os.path.join(workdir, "metrics.json")))
  assert [r["epoch"] for r in history] == [1, 2]
  assert history[-1]["size_kb"] == pytest.approx(results["size_kb"], rel=1e-6)
  assert results["test_accuracy"] > 0.3  # 10 classes of bright bars
  assert not glob.glob(os.path.join(workdir, "**", ".tmp-*"), recursive=True)
  layers = glob.glob(os.path.join(workdir, "tensorboard", "layers", "*"))
  assert layers, "per-layer histograms were not written"


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  data_dir = fake_mnist(tmp_path / "data")
  straight = training.train_and_evaluate(
      smoke_config(data_dir, epochs=3), str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  training.train_and_evaluate(smoke_config(data_dir, epochs=1), resumed_dir)
  resumed = training.train_and_evaluate(smoke_config(data_dir, epochs=3),
                                        resumed_dir)
  history = json.load(open(os.path.join(resumed_dir, "metrics.json")))
  assert [r["epoch"] for r in history] == [1, 2, 3]
  # Same data order and optimizer state after the restart: same result.
  assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"],
                                                   abs=1e-6)
  assert resumed["size_kb"] == pytest.approx(straight["size_kb"], rel=1e-5)


def test_kill_9_then_same_command_finishes(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=2000)
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"),
         f"--config={REPO}/configs/mnist_lenet300.py:smoke",
         f"--config.data_dir={data_dir}", "--config.verify_checksums=False",
         "--config.num_validation=100", "--config.max_train_examples=0",
         "--config.epochs=40", "--config.verbose=0",
         "--config.lr_schedule=constant", f"--workdir={workdir}"]
  state = workdir / "checkpoints" / "state.json"
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
      time.sleep(0.2)
    assert state.exists(), "no checkpoint appeared"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = json.load(open(state))["epoch"]
  assert killed_at < 40, "the run finished before it could be killed"
  done = subprocess.run(cmd[:-2] + ["--config.epochs=42", cmd[-1]],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  history = json.load(open(workdir / "metrics.json"))
  assert [r["epoch"] for r in history] == list(range(1, 43))
  assert json.load(open(state))["epoch"] == 42


@pytest.mark.parametrize("field, value, match", [
    ("gamma", -1.0, "gamma"), ("dataset", "cifar", "dataset"),
    ("epochs", 0, "epochs"), ("method", "prune", "method"),
    ("target_kb", 0.001, "cannot be reached"),
    ("compressor", "prune", "compressor"),
    ("gate_lr_multiplier", 0.0, "gate_lr_multiplier")])
def test_bad_config_values_are_named(tmp_path, field, value, match):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  config = smoke_config(data_dir)
  config[field] = value
  with pytest.raises(ValueError, match=match):
    training.train_and_evaluate(config, str(tmp_path / "run"))


def test_compressor_per_layer_is_validated_and_applied(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  config = smoke_config(data_dir, compressor="gates")
  config.compressor_per_layer.nope = "bits"
  with pytest.raises(ValueError, match="nope.*not layers"):
    training.build_model(config, (28, 28, 1), 10, 10)
  config.compressor_per_layer = {"dense": "gates+bits"}
  config.compressor_per_layer.dense = "fast"
  with pytest.raises(ValueError, match="compressor_per_layer.dense='fast'"):
    training.validate(config)
  config.compressor_per_layer.dense = "none"
  model = training.build_model(config, (28, 28, 1), 10, 10)
  kinds = {l.name: type(getattr(l, "compressor", None)).__name__
           for l in model.layers if l.weights}
  assert kinds["dense"] == "NoneType"
  assert set(kinds.values()) == {"NoneType", "HardConcreteGate"}


def test_missing_data_says_how_to_fix(tmp_path):
  config = smoke_config(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="does not exist|download"):
    training.train_and_evaluate(config, str(tmp_path / "run"))


def test_shedding_run_resumes_like_an_uninterrupted_one(tmp_path):
  data_dir = fake_mnist(tmp_path / "data")
  overrides = dict(shed_every_epochs=1, gamma=2.0, lr_multiplier=300.0)
  straight = training.train_and_evaluate(
      smoke_config(data_dir, epochs=4, **overrides), str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  training.train_and_evaluate(smoke_config(data_dir, epochs=2, **overrides),
                              resumed_dir)
  resumed = training.train_and_evaluate(
      smoke_config(data_dir, epochs=4, **overrides), resumed_dir)
  assert straight["weights_alive"] < straight["weights_total"]
  assert resumed["size_kb"] == pytest.approx(straight["size_kb"], rel=1e-4)
  assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"],
                                                   abs=1e-6)


def test_resuming_a_cosine_run_with_other_epochs_is_refused(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(
      smoke_config(data_dir, epochs=1, lr_schedule="cosine"), workdir)
  with pytest.raises(ValueError, match="same epochs"):
    training.train_and_evaluate(
        smoke_config(data_dir, epochs=3, lr_schedule="cosine"), workdir)
