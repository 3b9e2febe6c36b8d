"""`config.model` in every form: a built-in name, "package.module:function",
"keras.applications.NAME" and a saved .keras file, and every way to get one
wrong. The builders below are named as "test_models_spec:NAME"."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from selfcompress import config as config_lib
from selfcompress import data, errors, imp, models, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_CALLABLE = 3


def tiny(input_shape, num_classes, units=8):
  return keras.Sequential([
      keras.Input(input_shape), keras.layers.Flatten(),
      keras.layers.Dense(units, activation="relu"),
      keras.layers.Dense(num_classes)], name="tiny")


def not_a_model(input_shape, num_classes):
  return {"layers": [input_shape, num_classes]}


def wrong_outputs(input_shape, num_classes):
  return tiny(input_shape, num_classes + 1)


def fixed_input(input_shape, num_classes):
  return tiny((5, 5, 1), num_classes)


def npz(tmp_path, n_train=120, n_test=30):
  """8x8 images whose class (of 3) is a bright row: learnable in an epoch."""
  rng = np.random.default_rng(0)
  def split(n):
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
    x[np.arange(n), 2 * y + 1] = 255
    return x, y
  (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
  path = str(tmp_path / "d.npz")
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=y_test)
  return path


def run_config(dataset, model, **fields):
  c = config_lib.base()
  c.dataset, c.model = dataset, model
  c.epochs, c.batch_size, c.verbose, c.num_validation = 1, 16, 0, 20
  for key, value in fields.items():
    c[key] = value
  return c


def test_a_builder_named_module_function():
  model = models.get("test_models_spec:tiny", (8, 8, 1), 3, units=5)
  assert model.name == "tiny" and model.output_shape == (None, 3)
  assert model.layers[1].units == 5
  assert models.kind("test_models_spec:tiny") == "function"
  with pytest.raises(errors.ConfigError, match=r"model_kwargs=\{'unitz': 5\}: "
                     r".*takes \['input_shape', 'num_classes', 'units'\]"):
    models.get("test_models_spec:tiny", (8, 8, 1), 3, unitz=5)
  with pytest.raises(errors.ConfigError, match="model_kwargs=.*'hidden'"):
    models.get("lenet5", (28, 28, 1), 10, hidden=(3,))


def test_resnet20_through_module_function():
  model = models.get("selfcompress.models:resnet20", (32, 32, 3), 10)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert len(convs) == 21  # 1 + 3 stages x 3 blocks x 2, + 2 projections
  assert sum(c.kernel_size == (1, 1) for c in convs) == 2
  assert not any(isinstance(l, keras.layers.Add) for l in model.layers)  # x + y
  assert 0.26e6 < model.count_params() < 0.28e6  # ResNet-20: 0.27M
  assert model.output_shape == (None, 10)
  assert models.get("resnet20", (28, 28, 1), 10, blocks=1).name == "resnet8"


def test_imp_builds_any_model_form():
  c = run_config("digits", "test_models_spec:tiny")
  c.method = "dense"
  ds = data.load("digits", batch_size=32, num_validation=0)
  model = imp._new_model(c, ds, seed=0)
  assert model.name == "tiny" and model.output_shape == (None, 10)


@pytest.mark.parametrize("spec, match", [
    ("no_such_package_xyz.models:build",
     "no module 'no_such_package_xyz.models' to import.*PYTHONPATH"),
    ("selfcompress.models:nope", "has no 'nope'.*'resnet20'"),
    ("selfcompress.models:MODELS", "is a dict, not a function"),
    ("test_models_spec:not_a_model", "gave a dict, not a keras.Model"),
    ("test_models_spec:wrong_outputs", "has 4 outputs, the dataset needs 3"),
    ("test_models_spec:fixed_input",
     r"takes inputs of shape \(5, 5, 1\), the dataset gives \(8, 8, 1\)"),
    ("resnet", "must be a built-in name .*package.module:function"),
    ("keras.applications.NoSuchNet",
     "keras.applications has no model 'NoSuchNet'.*MobileNetV2"),
    ("broken_module_abc:build",
     "importing 'broken_module_abc' failed.*'no_such_dependency_abc'"),
])
def test_bad_model_specs_get_one_clear_error(tmp_path, monkeypatch, spec,
                                             match):
  (tmp_path / "broken_module_abc.py").write_text(
      "import no_such_dependency_abc\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(errors.ConfigError, match=match):
    models.get(spec, (8, 8, 1), 3)


def test_keras_applications_by_name():
  model = models.get("keras.applications.MobileNetV2", (32, 32, 3), 10,
                     alpha=0.35)
  assert model.output_shape == (None, 10)
  assert model.layers[-1].get_config()["activation"] == "linear"  # logits


def test_keras_applications_local_weights_file(tmp_path):
  start = models.get("keras.applications.MobileNetV2", (32, 32, 3), 4,
                     alpha=0.35)
  path = str(tmp_path / "m.weights.h5")
  start.save_weights(path)
  again = models.get("keras.applications.MobileNetV2", (32, 32, 3), 4,
                     alpha=0.35, weights=path)
  for a, b in zip(start.get_weights(), again.get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "imagenet"}, "weights='imagenet'.*never does.*save_weights"),
    ({"weights": "/no/such/file.weights.h5"},
     "weights='/no/such.*no such file"),
    ({"alpah": 0.35}, r"takes no \['alpah'\]"),
])
def test_keras_applications_bad_arguments(kwargs, match):
  with pytest.raises(errors.ConfigError, match=match):
    models.get("keras.applications.MobileNetV2", (32, 32, 3), 10, **kwargs)


def test_start_from_a_keras_file_and_fine_tune_compressed(tmp_path):
  start = tiny((8, 8, 1), 3, units=12)
  path = str(tmp_path / "start.keras")
  start.save(path)
  loaded = models.get(path, (8, 8, 1), 3)
  for a, b in zip(start.get_weights(), loaded.get_weights()):
    np.testing.assert_array_equal(a, b)
  dense = training.build_model(run_config("digits", path, method="dense"),
                               (8, 8, 1), 3, 10)
  for a, b in zip(start.get_weights(), dense.get_weights()):
    np.testing.assert_array_equal(a, b)
  compressed = training.build_model(run_config("digits", path), (8, 8, 1), 3,
                                    10)
  for layer in start.layers[1:]:
    assert compressed.get_layer(layer.name).compressor is not None
    np.testing.assert_array_equal(compressed.get_layer(layer.name).kernel,
                                  layer.kernel)
  # Fine-tuned into a compressed model, end to end.
  c = run_config(f"npz:{npz(tmp_path)}", path)
  results = training.train_and_evaluate(c, str(tmp_path / "run"))
  assert results["test_accuracy"] > 0.34 and results["weights_total"] > 0
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["model"] == path


@pytest.mark.parametrize("problem, match", [
    ("missing", "the file does not exist"),
    ("corrupt", "cannot be loaded as a Keras model"),
    ("kwargs", "is a saved model, built already; remove model_kwargs"),
    ("shape", r"inputs of shape \(8, 8, 1\), the dataset gives \(4, 4, 1\)"),
])
def test_bad_keras_files_are_named(tmp_path, problem, match):
  path = tmp_path / "m.keras"
  if problem == "corrupt":
    path.write_bytes(b"PK\x03\x04 not really a zip")
  elif problem != "missing":
    tiny((8, 8, 1), 3).save(str(path))
  kwargs = {"units": 4} if problem == "kwargs" else {}
  shape = (4, 4, 1) if problem == "shape" else (8, 8, 1)
  with pytest.raises(errors.ConfigError, match=match) as info:
    models.get(str(path), shape, 3, **kwargs)
  assert str(path) in str(info.value)


def test_the_command_line_names_a_bad_model_in_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "train.py"),
       f"--config={REPO}/configs/default.py:smoke",
       "--config.model=no_such_package_xyz:build",
       f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert "error: Bad config value: model='no_such_package_xyz:build'" in (
      done.stderr)
  assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
