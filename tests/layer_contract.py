"""One contract every self-compressing layer kind must satisfy."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from selfcompress.layers.base import COMPRESSION_ARGS


def check_signature(ours, keras_cls):
  """Our signature is Keras' plus the compression arguments."""
  theirs = inspect.signature(keras_cls.__init__).parameters
  mine = inspect.signature(ours.__init__).parameters
  assert [p for p in mine if p not in COMPRESSION_ARGS] == list(theirs)
  for name in COMPRESSION_ARGS:
    assert mine[name].kind is inspect.Parameter.KEYWORD_ONLY


def vary(compressor, n):
  """Gives each of `n` channels a different state, some of them dead."""
  if hasattr(compressor, "assign"):  # bit depths: dead below 0
    compressor.assign(bits=np.linspace(0.5, 6, n))
  if hasattr(compressor, "assign_log_alpha"):  # gates: closed below -2.4
    compressor.assign_log_alpha(np.linspace(-4.0, 4.0, n)[::-1])


def make_trainable(compressor):
  """Puts the compressor where every parameter has a gradient: bits with each
  channel's largest weights clipped (`b` gets its gradient through the clip
  bounds) and the smaller ones inside the grid, gates strictly between 0 and
  1 (where the hard-concrete sample is smooth)."""
  if hasattr(compressor, "assign"):
    # Largest |w| at 127/4 = 31.75 grid steps; the 5-bit grid is [-16, 15].
    compressor.assign(bits=5.0, exponent=compressor.exponent() + 2)
  if hasattr(compressor, "assign_log_alpha"):
    compressor.assign_log_alpha(0.0)


def check_layer(make_layer, keras_cls, input_shape, tmp_path):
  x = np.random.default_rng(1).normal(size=(4,) + input_shape).astype("float32")
  layer = make_layer()
  y = layer(x)
  ref = keras_cls.from_config(
      {k: v for k, v in layer.get_config().items() if k != "compressor"})
  assert tuple(y.shape) == tuple(ref(x).shape)

  # At 8 bits (and open gates) the layer is within one grid step of the
  # float one.
  ref.set_weights(layer.get_weights()[:len(ref.weights)])
  assert np.allclose(y, ref(x), atol=0.05 * float(np.abs(ref(x)).max()))

  # Config round trip gives an equal layer.
  clone = type(layer).from_config(layer.get_config())
  clone(x)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x), y)
  assert clone.get_config() == layer.get_config()

  # .keras save and load: identical outputs, compression state included.
  inp = keras.Input(input_shape)
  model = keras.Model(inp, layer(inp))
  vary(layer.compressor, layer.num_channels)
  before = model(x)
  path = tmp_path / f"{layer.name}.keras"
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded(x), before)
  for a, b in zip(loaded.weights, model.weights):
    np.testing.assert_array_equal(a, b)

  # Gradients reach the weights and every per-channel parameter.
  c = layer.compressor
  make_trainable(c)
  with tf.GradientTape() as tape:
    loss = keras.ops.sum(keras.ops.square(layer(x, training=True)))
  params = [layer.kernel_variable] + c.channel_variables()
  grads = tape.gradient(loss, params)
  for var, g in zip(params, grads):
    assert g is not None and np.abs(np.asarray(g)).sum() > 0, var.name

  # One training step moves the weights.
  model.compile(keras.optimizers.Adam(1e-2), "mse")
  w0 = [np.array(v) for v in model.trainable_weights]
  model.train_on_batch(x, np.zeros_like(np.asarray(before)))
  assert any(not np.array_equal(a, b) for a, b in
             zip(w0, model.trainable_weights))
