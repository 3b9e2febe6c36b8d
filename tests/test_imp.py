"""The IMP driver: reset modes, resume, config checks, on generated data."""

import json
import math
import os

import numpy as np
import pytest

from selfcompress import data, errors, imp, pruning
from test_training import REPO, fake_mnist, load_config


def imp_config(data_dir, **overrides):
  config = load_config(os.path.join(REPO, "configs", "mnist_lenet300_imp.py"),
                       "smoke")
  config.data_dir = data_dir
  config.verify_checksums = False
  config.num_validation = 100
  config.max_train_examples = 300
  config.epochs = 2
  config.verbose = 0
  config.imp.levels = 1
  config.imp.fraction = 0.5
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return fake_mnist(tmp_path_factory.mktemp("data"), n_train=500, n_test=100)


def load(path):
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def prepared(config, workdir, level):
  ds = data.load(config.dataset, config.data_dir, batch_size=config.batch_size,
                 num_validation=config.num_validation, seed=config.seed,
                 verify_checksums=False, first_epoch=0,
                 max_train_examples=config.max_train_examples)
  steps = ds.steps_per_epoch
  return imp.prepare_level(config, ds, steps, level, workdir), steps


def masked(weights, model, mask):
  """`weights` (a get_weights list) with each kernel multiplied by `mask`."""
  kernels = {id(l.kernel): p for l, p in zip(pruning.prunable(model), mask)}
  return [w * mask[kernels[id(v)]] if id(v) in kernels else w
          for w, v in zip(weights, model.weights)]


def assert_weights_equal(model, expected, skip_masks=True):
  for v, want in zip(model.weights, expected):
    if not (skip_masks and v.path.endswith("kernel_mask")):
      np.testing.assert_allclose(np.asarray(v), want, atol=1e-7, err_msg=v.path)


@pytest.mark.parametrize("reset", ["init", "rewind", "lr_rewind", "finetune"])
def test_each_reset_restores_what_it_should(tmp_path, data_dir, reset):
  config = imp_config(data_dir, **{"imp.reset": reset, "imp.rewind_epoch": 1,
                                   "lr_schedule": "cosine"})
  workdir = str(tmp_path / reset)
  imp.run(config, workdir)  # levels 0 and 1
  (model, mask, first_epoch), steps = prepared(config, workdir, 1)
  assert mask == pruning.Mask.load(os.path.join(workdir, "level_01",
                                                "mask.npz"))
  assert 0.45 < mask.density < 0.55  # half of everything, output at 0.25
  source = {"init": "init.npz", "rewind": "rewind.npz",
            "lr_rewind": "level_00/weights.npz",
            "finetune": "level_00/weights.npz"}[reset]
  assert_weights_equal(model, masked(load(os.path.join(workdir, source)),
                                     model, mask))
  lr = model.optimizer.learning_rate
  if reset == "finetune":
    assert float(lr) == pytest.approx(config.imp.finetune_learning_rate)
  else:
    assert first_epoch == (1 if reset == "rewind" else 0)
    # The cosine schedule replays from the rewind point, fresh optimizer.
    cosine = 0.5 * (1 + math.cos(math.pi * first_epoch / config.epochs))
    assert float(lr) == pytest.approx(config.learning_rate * cosine, rel=1e-5)
    assert int(model.optimizer.iterations) == 0


@pytest.mark.slow  # minutes on 2 cores; -m slow runs it
def test_reinit_control_takes_masks_from_another_run(tmp_path, data_dir):
  ticket = str(tmp_path / "ticket")
  imp.run(imp_config(data_dir), ticket)
  config = imp_config(data_dir, **{"imp.reset": "reinit",
                                   "imp.mask_from": ticket})
  control = str(tmp_path / "control")
  imp.run(config, control)
  for level in (0, 1):
    mask_path = f"level_{level:02d}/mask.npz"
    assert (pruning.Mask.load(os.path.join(control, mask_path)) ==
            pruning.Mask.load(os.path.join(ticket, mask_path)))
  (model, mask, _), _ = prepared(config, control, 1)
  init = load(os.path.join(control, "init.npz"))
  kernel = [i for i, v in enumerate(model.weights) if v.path.endswith("/kernel")][0]
  start = np.asarray(model.weights[kernel])
  keep = mask[list(mask)[0]]
  assert np.all(start[keep == 0] == 0)
  assert not np.allclose(start[keep == 1], init[kernel][keep == 1])
  # Fresh draws from the same initialiser, not the magnitude-selected
  # survivors (whose spread is larger).
  assert np.std(start[keep == 1]) == pytest.approx(np.std(init[kernel]),
                                                   rel=0.05)


@pytest.mark.slow  # minutes on 2 cores; -m slow runs it
def test_resume_skips_finished_levels(tmp_path, data_dir, monkeypatch):
  workdir = str(tmp_path / "run")
  first = imp.run(imp_config(data_dir), workdir)
  assert [r["level"] for r in first] == [0, 1]
  os.remove(os.path.join(workdir, "level_01", "results.json"))  # a crash
  trained = []
  real = imp._train_level
  def spy(config, ds, steps, level, workdir):
    trained.append(level)
    return real(config, ds, steps, level, workdir)
  monkeypatch.setattr(imp, "_train_level", spy)
  rows = imp.run(imp_config(data_dir, **{"imp.levels": 3}), workdir)
  assert trained == [1, 2, 3]
  assert rows[0] == first[0]
  densities = [r["density"] for r in rows]
  assert densities == sorted(densities, reverse=True) and densities[0] == 1
  summary = json.load(open(os.path.join(workdir, "results.json")))
  assert [r["level"] for r in summary] == [0, 1, 2, 3]
  for r in rows:
    mask = pruning.Mask.load(os.path.join(workdir, f"level_{r['level']:02d}",
                                          "mask.npz"))
    assert mask.density == pytest.approx(r["density"])
    # The trained weights obey the mask they were trained under.
    weights = load(os.path.join(workdir, f"level_{r['level']:02d}",
                                "weights.npz"))
    kernels = [w for w in weights if w.ndim == 2 and not set(np.unique(w)) <= {0, 1}]
    for kernel, keep in zip(kernels, [a for _, a in mask.items()]):
      assert np.all(kernel[keep == 0] == 0)
  with pytest.raises(errors.WorkdirError, match="(?s)different config.*imp.fraction: 0.5 -> 0.3"):
    imp.run(imp_config(data_dir, **{"imp.fraction": 0.3}), workdir)


@pytest.mark.parametrize("field, value, match", [
    ("imp.fraction", 1.5, "imp.fraction"),
    ("imp.reset", "rewind_to_init", "imp.reset"),
    ("imp.strategy", "l1", "imp.strategy"),
    ("imp.rewind_epoch", 2, "imp.rewind_epoch"),
    ("method", "selfcompress", "method='dense'"),
    ("imp.mask_from", "/nonexistent", "imp.mask_from")])
def test_bad_imp_config_values_are_named(data_dir, field, value, match):
  config = imp_config(data_dir, **{"imp.reset": "rewind"})
  target, leaf = (config.imp, field[4:]) if field.startswith("imp.") else (config, field)
  target[leaf] = value
  with pytest.raises(ValueError, match=match):
    imp.validate(config)


def test_load_level_and_tolerated_bits(tmp_path, data_dir):
  config = imp_config(data_dir)
  workdir = str(tmp_path / "run")
  rows = imp.run(config, workdir)
  with pytest.raises(ValueError, match="not finished"):
    imp.load_level(config, None, workdir, 5)
  ds = data.load(config.dataset, config.data_dir, batch_size=60,
                 num_validation=100, verify_checksums=False,
                 max_train_examples=300)
  model = imp.load_level(config, ds, workdir, 1)
  mask = pruning.mask_of(model)
  assert mask.density == pytest.approx(rows[1]["density"])
  test = model.evaluate(ds.test, return_dict=True, verbose=0)["accuracy"]
  assert test == pytest.approx(rows[1]["test_accuracy"], abs=1e-6)
  reference = model.evaluate(ds.validation, return_dict=True, verbose=0)
  bits, accuracy = imp.tolerated_bits(model, ds.validation, tolerance=0.0,
                                      bits=[8, 4, 2])
  assert bits in (8, 4, 2, 32)
  assert accuracy >= reference["accuracy"]
  kernels = pruning.kernels(model)
  for path, keep in mask.items():
    assert np.all(kernels[path][keep == 0] == 0)
    if bits != 32:
      assert len(np.unique(kernels[path])) <= 2 ** bits


def test_imp_curves_plot(tmp_path):
  from selfcompress import plots
  run = [{"density": d, "accuracy": a} for d, a in ((1.0, 0.9), (0.5, 0.95))]
  path = tmp_path / "curves.png"
  plots.imp_curves({"init": [run, run], "reinit": [run]}, str(path),
                   references=[("dense", 0.93)])
  assert path.stat().st_size > 1000
