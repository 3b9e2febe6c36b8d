"""export(): a SavedModel that is small and computes what the model did."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from selfcompress import exporting
from test_shedding import _kill, _randomize, conv_bn_flatten, mlp, residual


def _half_dead(build, rng, compressor="bits"):
  """A compressed `build()` with random BatchNorm statistics (so dead
  channels carry constants) and half of every layer's channels dead."""
  model = sc.compress(build(), compressor=compressor)
  _randomize(model, rng)
  _kill(model, rng)
  return model


def _serve(path, x):
  loaded = tf.saved_model.load(path)
  fn = loaded.signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  return fn(**{name: tf.constant(x)})["output"].numpy()


COMPRESSED = [(mlp, "bits"), (conv_bn_flatten, "bits"), (residual, "bits"),
              (mlp, "gates"), (conv_bn_flatten, "gates"),
              (mlp, "gates+bits"), (residual, "gates+bits")]


@pytest.mark.parametrize("build, compressor", COMPRESSED)
def test_saved_model_equals_quantized_forward(build, compressor, tmp_path):
  rng = np.random.default_rng(0)
  model = _half_dead(build, rng, compressor)
  for layer in model.layers:  # varied bit depths on the alive channels
    if isinstance(layer, sc.layers.CompressedLayer) and compressor != "gates":
      c = layer.compressor
      bits = np.asarray(c.raw_bits())
      c.assign(bits=np.where(bits > 0, rng.uniform(1.2, 7.9, bits.size), bits))
  x = rng.normal(size=(64,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  report = sc.export(model, tmp_path / "export")
  served = _serve(str(tmp_path / "export"), x)
  np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))
  saved = json.load(open(tmp_path / "export" / "selfcompress_export.json"))
  assert saved["packed_weight_bytes"] == report.packed_weight_bytes
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def _serve_in_session(path, x):
  """The TF1 loader of TF Serving and `saved_model_cli run`: restore, then
  the init op, then the signature, in a graph session."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    return sess.run(sig.outputs["output"].name,
                    {sig.inputs["inputs"].name: x})


def test_kernels_are_decoded_once_at_load_and_not_saved(tmp_path):
  rng = np.random.default_rng(2)
  models = [_half_dead(mlp, rng), _half_dead(conv_bn_flatten, rng),
            _half_dead(residual, rng, "gates+bits")]
  paths = [str(tmp_path / f"export{i}") for i in range(len(models))]
  for model, path in zip(models, paths):
    sc.export(model, path)
  for model, path in zip(models, paths):  # both loaded in one process
    x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(x, training=False))
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    for _ in range(2):
      np.testing.assert_allclose(fn(inputs=tf.constant(x))["output"].numpy(),
                                 expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_serve_in_session(path, x), expected,
                               atol=1e-5, rtol=0)
    # On disk: uint8 codes, int32 channel order and float32 per-channel
    # vectors (scale, bias, BatchNorm); no float kernel, flat or not.
    widest = max(l.compressor.num_channels for l in model.layers
                 if isinstance(l, sc.layers.CompressedLayer))
    reader = tf.train.load_checkpoint(
        os.path.join(path, "variables", "variables"))
    for name, dtype in reader.get_variable_to_dtype_map().items():
      if dtype == tf.float32:
        assert reader.get_tensor(name).size <= widest, name


@pytest.mark.parametrize("build, compressor", COMPRESSED)
def test_packed_codes_are_as_small_as_the_accounting_says(build, compressor,
                                                          tmp_path):
  # Random BatchNorm: dead channels carry constants; the accounting counts
  # the ones a padded convolution must still read, as shed() keeps them.
  # Gate-only channels are stored as float32: the accounting's 32 bits.
  model = _half_dead(build, np.random.default_rng(1), compressor)
  report = sc.export(model, tmp_path / "export")
  weight_bits = sum(l.weight_bits for l in sc.size(model).layers)
  groups = 8 * len([l for l in model.layers
                    if isinstance(l, sc.layers.CompressedLayer)])
  assert weight_bits <= report.packed_weight_bytes * 8 <= weight_bits + 8 * groups


def test_export_rejects_plain_models_and_never_half_writes(tmp_path):
  plain = mlp()
  with pytest.raises(ValueError, match="no self-compressing layers"):
    sc.export(plain, tmp_path / "a")
  model = sc.compress(mlp())
  sc.export(model, tmp_path / "b")
  with pytest.raises(FileExistsError, match="overwrite"):
    sc.export(model, tmp_path / "b")
  with pytest.raises(ValueError, match="format"):
    sc.export(model, tmp_path / "c", format="onnx")
  assert sorted(os.listdir(tmp_path)) == ["b"]


class _Scale(keras.layers.Layer):
  """A custom layer whose config does not rebuild it (no get_config)."""

  def __init__(self, factor):
    super().__init__()
    self.factor = factor

  def call(self, x):
    return x * self.factor


class _LearnedScale(_Scale):
  """The same with a weight: it cannot be shared or rebuilt."""

  def build(self, input_shape):
    self.w = self.add_weight(shape=input_shape[-1:], initializer="ones")

  def call(self, x):
    return x * self.w * self.factor


def test_layers_without_config_are_shared_if_stateless_else_refused(
    tmp_path, monkeypatch):
  inp = keras.Input((12,))
  x = keras.layers.Dense(8, activation="relu")(inp)
  model = sc.compress(keras.Model(inp, keras.layers.Dense(3)(_Scale(2.0)(x))))
  x = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
  sc.export(model, tmp_path / "a")
  np.testing.assert_allclose(_serve(str(tmp_path / "a"), x),
                             model(x, training=False), atol=1e-5)
  shutil.rmtree(tmp_path / "a")

  inp = keras.Input((12,))
  x = keras.layers.Dense(8, activation="relu")(inp)
  model = keras.Model(inp, keras.layers.Dense(3)(_LearnedScale(2.0)(x)))
  with pytest.raises(ValueError,
                     match="(?s)rebuild layer.*_LearnedScale.*get_config"):
    sc.compress(model)

  def fail(model, path):  # a crash halfway through writing
    os.makedirs(path)
    open(os.path.join(path, "saved_model.pb"), "wb").close()
    raise OSError("disk full")
  monkeypatch.setattr(exporting, "_write_saved_model", fail)
  with pytest.raises(OSError, match="disk full"):
    sc.export(sc.compress(mlp()), tmp_path / "b")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("build", [mlp, conv_bn_flatten, residual])
def test_litert_export_matches_within_float_tolerance(build, tmp_path):
  pytest.importorskip("ai_edge_litert.interpreter")
  rng = np.random.default_rng(2)
  model = _half_dead(build, rng)
  x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  path = str(tmp_path / "model.tflite")
  nbytes = sc.export(model, path, format="tflite")
  assert os.path.getsize(path) == nbytes
  served = exporting.run_litert(path, x)
  np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))


def test_litert_float16_weights_halve_the_file(tmp_path):
  pytest.importorskip("ai_edge_litert.interpreter")
  rng = np.random.default_rng(3)
  model = _half_dead(lambda: keras.Sequential([
      keras.Input((10, 10, 3)), keras.layers.Conv2D(32, 3),
      keras.layers.BatchNormalization(), keras.layers.ReLU(),
      keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(4)]), rng)
  x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  sizes = {}
  for weights in ("float32", "float16"):
    path = str(tmp_path / f"{weights}.tflite")
    sizes[weights] = sc.export(model, path, format="tflite",
                               litert_weights=weights)
    # float16 rounding of the folded weights: ~2^-11 relative per weight.
    np.testing.assert_allclose(exporting.run_litert(path, x), expected,
                               atol=5e-3 * np.abs(expected).max(), rtol=0)
  # Mostly weights (16 x 1,024 after shedding): float16 halves them.
  assert sizes["float16"] < 0.6 * sizes["float32"], sizes
  with pytest.raises(ValueError, match="litert_weights"):
    sc.export(model, tmp_path / "x", litert_weights="int4")
  with pytest.raises(ValueError, match="format='tflite' only"):
    sc.export(model, tmp_path / "x", litert_weights="float16")


def test_export_tool_writes_both_formats(tmp_path):
  model = _half_dead(mlp, np.random.default_rng(4))
  model.save(tmp_path / "model.keras")
  tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tools", "export.py")
  x = np.random.default_rng(5).normal(size=(4, 12)).astype("float32")
  for args in (["--output", str(tmp_path / "served")],
               ["--output", str(tmp_path / "m.tflite"), "--format=tflite",
                "--litert_weights=float16"]):
    done = subprocess.run([sys.executable, tool, f"--model={tmp_path}/model.keras",
                           *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
  np.testing.assert_allclose(_serve(str(tmp_path / "served"), x),
                             np.asarray(model(x, training=False)), atol=1e-5)
  assert os.path.getsize(tmp_path / "m.tflite") > 0
