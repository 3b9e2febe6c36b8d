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

from selfcompress import config as config_lib
from selfcompress import errors, training, workdir as workdirs
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
  # Tests extend runs to a larger `epochs`, which a cosine schedule (fixed
  # by the run's length) does not allow.
  config.lr_schedule = "constant"
  # The tests below are about the pipeline, not the config's recipe: a
  # fixed gamma and fixed-width codes, whatever the config's defaults.
  config.target_kb, config.compressor, config.storage = None, "bits", "fixed"
  config.random_crop_padding = 0
  config.num_validation = 100
  config.verbose = 0
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_configs_load_and_validate(path):
  for arg in (None, "smoke", "dense", "smoke,dense"):
    config = load_config(path, arg)
    training.validate(config)  # `dense` clears the compression's settings
    assert config.epochs >= 1
    assert (config.method == "dense") == ("dense" in (arg or "")
                                          or path.endswith("_imp.py"))
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
  umask = os.umask(0o022)
  os.umask(umask)
  for name in ("results.json", "model.keras", "metrics.csv",
               "checkpoints/state.json"):  # written atomically, not 0600
    mode = os.stat(os.path.join(workdir, name)).st_mode & 0o777
    assert mode == 0o666 & ~umask, (name, oct(mode))
  layers = glob.glob(os.path.join(workdir, "tensorboard", "layers", "*"))
  assert layers, "per-layer histograms were not written"


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  data_dir = fake_mnist(tmp_path / "data")
  straight = training.train_and_evaluate(
      smoke_config(data_dir, epochs=3), str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  training.train_and_evaluate(smoke_config(data_dir, epochs=1), resumed_dir)
  with pytest.raises(errors.WorkdirError, match="(?s)epochs: 1 -> 3.*--extend_epochs"):
    training.train_and_evaluate(smoke_config(data_dir, epochs=3), resumed_dir)
  resumed = training.train_and_evaluate(smoke_config(data_dir, epochs=3),
                                        resumed_dir, extend_epochs=True)
  history = json.load(open(os.path.join(resumed_dir, "metrics.json")))
  assert [r["epoch"] for r in history] == [1, 2, 3]
  # metrics.csv keeps its column order across the restart.
  header = [open(os.path.join(d, "metrics.csv")).readline()
            for d in (str(tmp_path / "straight"), resumed_dir)]
  assert header[0] == header[1]
  assert header[0].startswith("epoch,seconds,loss,accuracy,val_loss,")
  assert json.load(open(os.path.join(resumed_dir, "config.json")))["epochs"] == 3
  # Same data order and optimizer state after the restart: same result.
  assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"],
                                                   abs=1e-6)
  assert resumed["size_kb"] == pytest.approx(straight["size_kb"], rel=1e-5)


def _wait_for_epoch(state, epoch, proc, seconds=120):
  deadline = time.time() + seconds
  while time.time() < deadline and proc.poll() is None:
    if state.exists() and json.load(open(state))["epoch"] >= epoch:
      return
    time.sleep(0.2)
  raise AssertionError(f"no checkpoint of epoch {epoch} appeared")


@pytest.mark.slow  # minutes on 2 cores; -m slow runs it
def test_concurrent_runs_and_kill_9(tmp_path):
  """Two processes on one workdir: the second is refused, naming the first,
  which finishes. A run killed with kill -9 leaves no stale lock: the same
  command resumes it."""
  data_dir = fake_mnist(tmp_path / "data", n_train=2000)
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"),
         f"--config={REPO}/configs/mnist_lenet300.py:smoke",
         f"--config.data_dir={data_dir}", "--config.verify_checksums=False",
         "--config.num_validation=100", "--config.max_train_examples=0",
         "--config.epochs=10", "--config.verbose=0",
         "--config.lr_schedule=constant", f"--workdir={workdir}"]
  state = workdir / "checkpoints" / "state.json"
  first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    _wait_for_epoch(state, 1, first)
    # Paused while the second one tries, so it cannot finish first.
    first.send_signal(signal.SIGSTOP)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"in use by another process (PID {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, "the first run did not finish"
  finally:
    if first.poll() is None:
      first.kill()
  assert json.load(open(workdir / "results.json"))["epochs"] == 10
  # Extended to 25 epochs, killed with kill -9 in the middle...
  longer = [a.replace("epochs=10", "epochs=25") for a in cmd]
  longer.insert(2, "--extend_epochs")
  killed = subprocess.Popen(longer, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    _wait_for_epoch(state, 11, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
  finally:
    if killed.poll() is None:
      killed.kill()
  killed_at = json.load(open(state))["epoch"]
  assert 11 <= killed_at < 25, "the run finished before it could be killed"
  assert (workdir / ".lock").read_text().strip() == str(killed.pid)
  # ...and the same command takes the dead holder's lock and finishes.
  done = subprocess.run(longer, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"Resuming {workdir} from epoch" in done.stdout
  history = json.load(open(workdir / "metrics.json"))
  assert [r["epoch"] for r in history] == list(range(1, 26))
  assert json.load(open(state))["epoch"] == 25


@pytest.mark.parametrize("field, value, match", [
    ("gamma", -1.0, "gamma"), ("dataset", "cifar", "dataset"),
    ("epochs", 0, "epochs"), ("method", "prune", "method"),
    ("target_kb", 0.001, "cannot be reached"),
    ("compressor", "prune", "compressor"),
    ("gate_lr_multiplier", 0.0, "gate_lr_multiplier"),
    ("max_train_examples", -5, "max_train_examples=-5: must be an integer >= 0"),
    ("num_validation", -1, "num_validation=-1"),
    ("checkpoint_every_epochs", 0, "checkpoint_every_epochs"),
    ("seed", -1, "seed"), ("verbose", 3, "verbose"),
    ("batch_size", 0, "batch_size")])
def test_bad_config_values_are_named(tmp_path, field, value, match):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  config = smoke_config(data_dir)
  config[field] = value
  with pytest.raises(ValueError, match=match):
    training.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run"), "a refused run left a workdir"


@pytest.mark.parametrize("field, value", [
    ("target_kb", 5.0), ("compressor", "gates"), ("shed_every_epochs", 1)])
def test_compression_settings_with_a_dense_run_are_refused(field, value):
  config = config_lib.base()
  config.method = "dense"
  config[field] = value
  with pytest.raises(errors.ConfigError,
                     match=f"{field}=.*no meaning with method='dense'"):
    training.validate(config)


def test_every_config_field_is_documented():
  fields = workdirs.flat(config_lib.base())
  assert not [f for f in fields if f not in config_lib.DOCS]
  assert not [f for f in config_lib.DOCS if f not in fields]


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


def test_budget_rate_follows_the_run_length():
  """Unset, target_rate lets gamma cross its range once in the run's steps,
  so a short run reaches its budget as a long one does; set, it is kept."""
  import selfcompress as sc
  low, high = sc.model.GAMMA_RANGE
  config = smoke_config("unused", target_kb=50.0, epochs=4)
  short = training.build_model(config, (28, 28, 1), 10, 25)
  assert short.target_rate == pytest.approx(np.log(high / low) / 100)
  config.epochs = 40
  long = training.build_model(config, (28, 28, 1), 10, 25)
  assert long.target_rate == pytest.approx(short.target_rate / 10)
  config.target_rate = 0.002
  training.validate(config)
  assert training.build_model(config, (28, 28, 1), 10, 25).target_rate == 0.002
  config.target_rate = -1.0
  with pytest.raises(ValueError, match="target_rate"):
    training.validate(config)


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
      smoke_config(data_dir, epochs=4, **overrides), resumed_dir,
      extend_epochs=True)
  assert straight["weights_alive"] < straight["weights_total"]
  assert resumed["size_kb"] == pytest.approx(straight["size_kb"], rel=1e-4)
  assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"],
                                                   abs=1e-6)


def test_extending_a_cosine_run_is_refused(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(
      smoke_config(data_dir, epochs=1, lr_schedule="cosine"), workdir)
  with pytest.raises(errors.WorkdirError, match="cosine.*cannot be extended"):
    training.train_and_evaluate(
        smoke_config(data_dir, epochs=3, lr_schedule="cosine"), workdir,
        extend_epochs=True)


def _snapshot(folder):
  """path -> bytes of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = open(path, "rb").read()
  return out


def test_a_changed_config_leaves_the_workdir_untouched(tmp_path, capsys):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, epochs=1)
  first = training.train_and_evaluate(config, workdir)
  # Finished: the same config reports it again and changes nothing.
  before = _snapshot(workdir)
  capsys.readouterr()
  again = training.train_and_evaluate(config, workdir)
  assert again == first
  out = capsys.readouterr().out
  assert "finished; not training again" in out and "Test accuracy" in out
  assert _snapshot(workdir) == before
  changed = [dict(gamma=1.0), dict(model="lenet5"),
             dict(dataset="fashion_mnist"), dict(epochs=3)]
  for overrides in changed:
    with pytest.raises(errors.WorkdirError) as e:
      training.train_and_evaluate(
          smoke_config(data_dir, **{"epochs": 1, **overrides}), workdir)
    field, new = next(iter(overrides.items()))
    assert f"{field}: {config[field]!r} -> {new!r}" in str(e.value)
    assert "new --workdir" in str(e.value)
    assert _snapshot(workdir) == before
  # Interrupted (a checkpoint at epoch 1 of 3, no results yet): a changed
  # config is refused too, with every file as it was.
  os.remove(os.path.join(workdir, "results.json"))
  record = json.load(open(os.path.join(workdir, "config.json")))
  record["epochs"] = 3
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(record, f)
  before = _snapshot(workdir)
  with pytest.raises(errors.WorkdirError, match=f"gamma: {config.gamma!r} -> 1.0"):
    training.train_and_evaluate(smoke_config(data_dir, epochs=3, gamma=1.0),
                                workdir)
  assert _snapshot(workdir) == before
  # ...and the same config resumes it.
  results = training.train_and_evaluate(smoke_config(data_dir, epochs=3),
                                        workdir)
  assert results["epochs"] == 3 and results["gamma"] == config.gamma


def test_a_workdir_that_cannot_be_created_is_named(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  with pytest.raises(errors.WorkdirError, match="cannot be used.*a folder"):
    training.train_and_evaluate(smoke_config(data_dir, epochs=1),
                                str(a_file / "run"))
  assert a_file.read_text() == "not a folder"


def test_a_locked_workdir_is_refused_and_free_again_after(tmp_path):
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  workdir = str(tmp_path / "run")
  with workdirs.Lock(workdir):
    with pytest.raises(errors.WorkdirError,
                       match=f"in use by another process \\(PID {os.getpid()}\\)"):
      training.train_and_evaluate(smoke_config(data_dir, epochs=1), workdir)
  results = training.train_and_evaluate(smoke_config(data_dir, epochs=1),
                                        workdir)
  assert results["epochs"] == 1


@pytest.mark.slow  # minutes on 2 cores; -m slow runs it
def test_sweep_runs_each_gamma_and_the_dense_baseline(tmp_path):
  from selfcompress import sweep
  data_dir = fake_mnist(tmp_path / "data", n_train=200, n_test=50)
  workdir = str(tmp_path / "sweep")
  # The dense baseline drops the compression settings (which validation
  # refuses with method='dense') instead of failing on them.
  # A budget (the LeNet configs carry one) is set aside: a sweep varies gamma.
  config = smoke_config(data_dir, epochs=1, compressor="gates", target_kb=8.0)
  points = sweep.run_sweep(config, workdir, gammas=[0.1], seeds=[0])
  assert sorted(p["method"] for p in points) == ["dense", "selfcompress"]
  run = json.load(open(os.path.join(workdir, "gamma0.1_seed0", "config.json")))
  assert run["target_kb"] is None and run["gamma"] == 0.1
  dense = json.load(open(os.path.join(workdir, "dense_seed0", "config.json")))
  assert dense["method"] == "dense" and dense["compressor"] == "bits"
  for name in ("sweep.json", "pareto.png", "gamma0.1_seed0/results.json"):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_a_record_without_a_newer_field_matches_its_default():
  now = workdirs.flat(config_lib.base())
  before = dict(now)
  del before["loss"]  # a workdir written before `loss` existed
  assert workdirs.differences(before, now) == []
  changed = dict(now, loss="mse")
  assert workdirs.differences(before, changed) == [
      ("loss", "(absent)", "mse")]


def test_checkpoint_with_other_optimizer_state_refuses_to_resume(tmp_path):
  """A checkpoint whose optimizer state no longer matches (written by a
  version that kept other variables) is an error naming the way out, not a
  run that resumes with fresh moments and its schedule back at step 0."""
  import zipfile

  import h5py
  import keras

  import selfcompress as sc
  from selfcompress import checkpoint
  model = sc.compress(keras.Sequential([
      keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(2)]))
  model.compile("adam", "mse")
  x = np.ones((8, 4), "float32")
  model.fit(x, np.zeros((8, 2)), verbose=0)
  checkpoint.save(str(tmp_path), model, 1, [])
  assert checkpoint.restore(str(tmp_path))[1] == 1  # as saved: resumes
  # Drop one optimizer variable from the saved weights.
  path = tmp_path / "epoch-00001.keras"
  with zipfile.ZipFile(path) as z:
    z.extractall(tmp_path / "x")
  with h5py.File(tmp_path / "x" / "model.weights.h5", "r+") as f:
    group = f["optimizer"]["vars"]
    del group[str(len(group) - 1)]
  with zipfile.ZipFile(path, "w") as z:
    for name in os.listdir(tmp_path / "x"):
      z.write(tmp_path / "x" / name, name)
  with pytest.raises(errors.WorkdirError, match="cannot resume"):
    checkpoint.restore(str(tmp_path))


@pytest.mark.parametrize("ours", [True, False])
def test_tensorboard_passes_no_step_logs_it_does_not_record(tmp_path,
                                                            monkeypatch, ours):
  """At update_freq="epoch" Keras' callback still calls tf.summary.scalar
  with every step's logs (nothing records them); ours does not, and still
  writes the epoch's."""
  import keras
  from selfcompress import callbacks
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  model.compile("sgd", "mse")
  board = (callbacks.TensorBoard if ours else keras.callbacks.TensorBoard)(
      str(tmp_path))
  names, scalar = [], board.summary.scalar  # the module the callback uses

  def counting(name, *args, **kwargs):
    names.append(name)
    return scalar(name, *args, **kwargs)

  monkeypatch.setattr(board.summary, "scalar", counting)
  x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
  model.fit(x, x[:, :2], batch_size=8, epochs=2, callbacks=[board], verbose=0)
  per_step = [n for n in names if n.startswith("batch_")]
  assert (not per_step) if ours else len(per_step) == 8
  assert names.count("epoch_loss") == 2


def test_epoch_seconds_count_the_work_between_fits():
  """One `EpochLog` handed to two fits (as `fit_and_shed` does around a
  shed): the pause between them counts in the next epoch's seconds."""
  import keras
  from selfcompress import callbacks as cb
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse", run_eagerly=True)
  x, y = np.ones((8, 4), "float32"), np.ones((8, 1), "float32")
  history = []
  log = cb.EpochLog(history, print_fn=None)
  model.fit(x, y, epochs=1, verbose=0, callbacks=[log])
  time.sleep(1.5)  # the work between two fits
  model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[log])
  assert [r["epoch"] for r in history] == [1, 2]
  assert history[1]["seconds"] >= 1.5
