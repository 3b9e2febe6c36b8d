"""compress, shed and export on the graphs practitioners bring: op nodes,
nested models, channels_first, recurrent and attention layers, custom
layers, every compressed kind. Small and fast; `test_model_zoo.py` has the
keras.applications models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from capabilities import CHANNELS_FIRST

L = keras.layers


@keras.saving.register_keras_serializable(package="selfcompress_tests")
class LearnedScale(L.Layer):
  """A custom layer with a weight, between two compressed layers."""

  def build(self, input_shape):
    self.scale = self.add_weight(shape=input_shape[-1:], initializer="ones")

  def call(self, x):
    return x * self.scale


def op_nodes():
  inp = keras.Input((8,))
  a, b = L.Dense(16)(inp), L.Dense(16)(inp)
  x = keras.ops.relu(a + b) * 2.0
  x = keras.ops.concatenate([x, L.Dense(6, activation="tanh")(inp)], axis=-1)
  return keras.Model(inp, L.Dense(4)(x))


def nested():
  inner = keras.Sequential([keras.Input((8,)), L.Dense(12, activation="relu"),
                            L.Dense(10, activation="relu")], name="block")
  inp = keras.Input((8,))
  x = L.Dense(6, activation="relu")(inner(inp))
  return keras.Model(inp, L.Dense(3)(x))


def nested_conv_backbone():
  b_in = keras.Input((10, 10, 3))
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(b_in)))
  x = L.DepthwiseConv2D(3, strides=2)(x)
  backbone = keras.Model(b_in, L.Conv2D(6, 1, activation="relu")(x),
                         name="backbone")
  inp = keras.Input((10, 10, 3))
  x = L.GlobalAveragePooling2D()(backbone(inp))
  return keras.Model(inp, L.Dense(3)(L.Dense(8, activation="relu")(x)))


def channels_first():
  inp = keras.Input((3, 8, 8))
  x = L.Conv2D(6, 3, data_format="channels_first", activation="relu")(inp)
  x = L.BatchNormalization(axis=1)(x)
  x = L.MaxPooling2D(data_format="channels_first")(x)
  x = L.Conv2D(5, 1, data_format="channels_first", activation="relu")(x)
  return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


def bilstm():
  inp = keras.Input((10,), dtype="int32")
  x = L.Embedding(20, 8)(inp)
  x = L.Bidirectional(L.LSTM(6, return_sequences=True))(x)
  x = L.Dense(7, activation="relu")(x)
  return keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(x)))


def gru_text():
  inp = keras.Input((10,), dtype="int32")
  x = L.Embedding(20, 8)(inp)
  x = L.Dense(12, activation="relu")(x)
  x = L.Bidirectional(L.GRU(5))(x)
  return keras.Model(inp, L.Dense(3)(x))


def attention():
  inp = keras.Input((12,), dtype="int32")
  x = L.Embedding(30, 16)(inp)
  x = L.EinsumDense("abc,cd->abd", (12, 16), bias_axes="d",
                    activation="relu")(x)
  x = L.LayerNormalization()(x + L.MultiHeadAttention(2, 8)(x, x))
  x = L.Dense(8, activation="relu")(x)
  return keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(x)))


def custom_layer():
  inp = keras.Input((9,))
  x = LearnedScale()(L.Dense(10, activation="relu")(inp))
  return keras.Model(inp, L.Dense(3)(L.Dense(6, activation="relu")(x)))


def separable_and_transposed():
  inp = keras.Input((9, 9, 3))
  x = L.SeparableConv2D(8, 3, depth_multiplier=2, padding="same",
                        activation="relu")(inp)
  x = L.Conv2DTranspose(6, 3, strides=2, activation="relu")(x)
  x = L.SeparableConv2D(5, 3, strides=2)(x)
  return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


def conv1d_3d():
  inp = keras.Input((4, 6, 6, 2))
  x = L.Conv3D(6, 2, activation="relu")(inp)
  x = L.Reshape((3, 25 * 6))(x)
  x = L.Conv1D(5, 2, padding="causal", activation="relu")(x)
  x = L.SeparableConv1D(6, 2, activation="relu")(x)
  x = L.DepthwiseConv1D(2, depth_multiplier=2)(x)
  x = L.Conv1DTranspose(4, 2, activation="relu")(x)
  return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


MODELS = [op_nodes, nested, nested_conv_backbone,
          pytest.param(channels_first, marks=CHANNELS_FIRST), bilstm,
          gru_text, attention, custom_layer, separable_and_transposed,
          conv1d_3d]


def _inputs(model, rng, n=64):
  t = model.inputs[0]
  shape = (n,) + tuple(t.shape[1:])
  if "int" in str(t.dtype):
    return rng.integers(0, 20, size=shape).astype("int32")
  return rng.normal(size=shape).astype("float32")


def _kill_half(model, rng):
  """Half of every compressed layer's channels dead (nested ones too)."""
  killed = []
  for layer in sc.surgery.layers(model):
    if isinstance(layer, sc.layers.CompressedLayer):
      c = layer.compressor
      n = c.num_channels
      if c.min_channels >= n:
        continue
      dead = rng.permutation(n) < n // 2
      # Fewer bits on a coarser grid of the same range (from the 8 bits the
      # exponent was initialised for), so alive channels keep their signal.
      bits = rng.uniform(3.0, 8.0, n)
      c.assign(bits=np.where(dead, -1.0, bits),
               exponent=np.asarray(c.exponent()) + 8.0 - np.ceil(bits))
      killed.append(layer.name)
  return killed


def _calibrate(model, x):
  """BatchNorm statistics of the data, so outputs depend on the input."""
  for layer in sc.surgery.layers(model):
    if isinstance(layer, L.BatchNormalization):
      layer.momentum = 0.0
  model(x, training=True)


def _serve(path, x):
  fn = tf.saved_model.load(path).signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  assert fn.structured_input_signature[1][name].dtype == tf.as_dtype(x.dtype)
  return fn(**{name: tf.constant(x)})["output"].numpy()


@pytest.mark.parametrize("build", MODELS, ids=lambda b: b.__name__)
def test_compress_fit_shed_export(build, tmp_path):
  rng = np.random.default_rng(0)
  model = sc.compress(build())
  x = _inputs(model, rng)
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  model.fit(x, rng.integers(0, 3, len(x)), batch_size=32, epochs=1,
            verbose=0)
  _calibrate(model, x)
  killed = _kill_half(model, rng)
  compressed = [l for l in sc.surgery.layers(model)
                if isinstance(l, sc.layers.CompressedLayer)]
  assert len(killed) == len(compressed) - 1  # all but the logits
  expected = np.asarray(model(x, training=False))
  scale = np.abs(expected).max()
  assert expected.std(axis=0).max() > 1e-3 * scale  # depends on the input

  small = sc.shed(model)
  assert small.count_params() < model.count_params()
  np.testing.assert_allclose(small(x, training=False), expected, rtol=1e-5,
                             atol=1e-5 * scale)
  assert sc.size(small).bits == sc.size(model).bits

  sc.export(model, tmp_path / "served")
  np.testing.assert_allclose(_serve(str(tmp_path / "served"), x), expected,
                             rtol=1e-5, atol=1e-5 * scale)


def test_recurrent_weights_survive_shed_and_export_exactly(tmp_path):
  """Bidirectional(LSTM): every sub-layer's kernel is called `kernel`; with
  nothing dead, shed and export must give back the very same function."""
  rng = np.random.default_rng(1)
  model = sc.compress(bilstm(), bits_init=8)
  x = _inputs(model, rng)
  expected = np.asarray(model(x, training=False))
  np.testing.assert_array_equal(sc.shed(model)(x, training=False), expected)
  sc.export(model, tmp_path / "s")
  np.testing.assert_allclose(_serve(str(tmp_path / "s"), x), expected,
                             atol=1e-6)
