import keras
import numpy as np
import pytest
from keras import ops

from capabilities import CHANNELS_FIRST
from layer_contract import check_layer, check_signature
from selfcompress import compressors, layers

CASES = [
    (lambda: layers.Dense(6, activation="relu"), keras.layers.Dense, (5,)),
    (lambda: layers.Dense(3), keras.layers.Dense, (2, 7)),
    (lambda: layers.Conv1D(5, 3, padding="causal"), keras.layers.Conv1D, (9, 4)),
    (lambda: layers.Conv2D(6, 3, strides=2), keras.layers.Conv2D, (9, 9, 3)),
    (lambda: layers.Conv2D(6, 3, groups=2, use_bias=False),
     keras.layers.Conv2D, (7, 7, 4)),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
     keras.layers.DepthwiseConv2D, (6, 6, 3)),
    (lambda: layers.DepthwiseConv1D(3, depth_multiplier=2),
     keras.layers.DepthwiseConv1D, (8, 3)),
    (lambda: layers.Conv3D(4, 2), keras.layers.Conv3D, (4, 4, 4, 2)),
    (lambda: layers.Conv1DTranspose(4, 3, strides=2),
     keras.layers.Conv1DTranspose, (5, 3)),
    (lambda: layers.Conv2DTranspose(4, 3, padding="same"),
     keras.layers.Conv2DTranspose, (5, 5, 3)),
    (lambda: layers.Conv3DTranspose(3, 2), keras.layers.Conv3DTranspose,
     (3, 3, 3, 2)),
    pytest.param(lambda: layers.Conv2D(5, 3, data_format="channels_first"),
                 keras.layers.Conv2D, (3, 7, 7), marks=CHANNELS_FIRST),
    (lambda: layers.EinsumDense("abc,cd->abd", (4, 6), bias_axes="d"),
     keras.layers.EinsumDense, (4, 5)),
]


@pytest.mark.parametrize("compressor", ["bits", "gates", "gates+bits"])
@pytest.mark.parametrize("make, keras_cls, shape", CASES)
def test_layer_contract(make, keras_cls, shape, compressor, tmp_path):
  def make_with():
    layer = make()
    return type(layer).from_config(
        dict(layer.get_config(), compressor=compressor))
  check_layer(make_with, keras_cls, shape, tmp_path)


@pytest.mark.parametrize("ours", layers.ALL, ids=lambda c: c.__name__)
def test_signature_is_keras_plus_compression_args(ours):
  theirs = getattr(keras.layers, ours.__name__)
  check_signature(ours, theirs)


def _dense(kernel, bits, exponent, **kw):
  layer = layers.Dense(kernel.shape[1], use_bias=False, **kw)
  layer.build((None, kernel.shape[0]))
  layer.kernel_variable.assign(kernel)
  layer.compressor.assign(bits=bits, exponent=exponent)
  return layer


def test_grid_points_are_exact_and_rest_is_rounded_and_clipped():
  rng = np.random.default_rng(0)
  codes = rng.integers(-8, 8, size=(5, 3))
  layer = _dense(codes * 0.25, bits=4.0, exponent=-2.0)
  q = layer.compressor.apply(layer.kernel_variable, None)[0]
  np.testing.assert_array_equal(q, codes * 0.25)

  kernel = np.array([[0.3, 5.0, -5.0], [0.374, 0.376, -2.1]], "float32")
  layer = _dense(kernel, bits=4.0, exponent=-2.0)
  q = np.asarray(layer.compressor.apply(layer.kernel_variable, None)[0])
  # Range is [-8, 7] * 0.25 = [-2, 1.75].
  np.testing.assert_allclose(q, [[0.25, 1.75, -2.0], [0.25, 0.5, -2.0]])


def test_dead_channel_gives_exact_zero_output():
  layer = layers.Dense(4, bias_initializer="ones")
  x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
  layer(x)
  layer.compressor.assign(bits=[3.0, 0.0, -2.0, 0.5])
  y = np.asarray(layer(x))
  assert np.all(y[:, 1] == 0) and np.all(y[:, 2] == 0)
  assert np.all(y[:, 0] != 0)
  np.testing.assert_array_equal(layer.compressor.alive(), [1, 0, 0, 1])


def test_exponent_init_puts_largest_weight_on_top_level():
  layer = layers.Conv2D(4, 3, compressor=compressors.BitDepth(bits_init=6))
  layer.build((None, 8, 8, 2))
  kernel = np.asarray(layer.kernel_variable)
  scale = np.asarray(ops.power(2.0, layer.compressor.exponent()))
  top = np.abs(kernel).max(axis=(0, 1, 2))
  np.testing.assert_allclose(top / scale, 31.0, rtol=1e-5)
  q = np.asarray(layer.compressor.apply(layer.kernel_variable, None)[0])
  assert np.abs(q - kernel).max() <= scale.max() / 2 + 1e-7


def test_min_channels_holds_best_channels_alive():
  layer = _dense(np.ones((3, 4), "float32"), bits=[-1.0, -0.5, -3.0, -2.0],
                 exponent=0.0, min_channels=2)
  c = layer.compressor
  np.testing.assert_array_equal(c.alive(), [1, 1, 0, 0])
  np.testing.assert_array_equal(c.state().storage_bits, [2, 2, 0, 0])
  np.testing.assert_array_equal(c.held_channels(), [1, 1, 0, 0])


def test_lr_multiplier_scales_adam_step_of_bits():
  steps = {}
  for mult in (1.0, 50.0):
    layer = layers.Dense(
        2, compressor=compressors.BitDepth(lr_multiplier=mult))
    layer.build((None, 3))
    opt = keras.optimizers.Adam(1e-3)
    c = layer.compressor
    before = np.asarray(c.raw_bits())
    import tensorflow as tf
    with tf.GradientTape() as tape:
      loss = ops.sum(c.state().penalty_bits)
    opt.apply_gradients(zip(tape.gradient(loss, [c.params]), [c.params]))
    steps[mult] = before - np.asarray(c.raw_bits())
  np.testing.assert_allclose(steps[50.0], 50 * steps[1.0], rtol=1e-3)


@pytest.mark.parametrize("compressor", ["bits", "gates+bits", "inputs+bits"])
def test_layer_saved_with_bits_and_exponent_apart_still_loads(compressor):
  """Files written while `b` and `e` were two variables load unchanged."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 5)).astype("float32")
  saved = layers.Dense(3, compressor=compressor)
  saved.build((None, 5))
  c = saved.compressor
  c.assign(bits=[3.0, -1.0, 6.0], exponent=np.asarray(c.exponent()) + 1.0)
  store = {}
  saved.save_own_variables(store)
  values = [np.asarray(store[str(i)]) for i in range(len(store))]
  i = next(k for k, v in enumerate(saved.weights) if v is c.params)
  old = values[:i] + [values[i][:, 0], values[i][:, 1]] + values[i + 1:]

  loaded = layers.Dense(3, compressor=compressor)
  loaded.build((None, 5))
  loaded.load_own_variables({str(k): v for k, v in enumerate(old)})
  np.testing.assert_array_equal(loaded.compressor.raw_bits(), [3.0, -1.0, 6.0])
  np.testing.assert_array_equal(loaded.compressor.exponent(), c.exponent())
  np.testing.assert_array_equal(loaded(x), saved(x))


@pytest.mark.parametrize("bad, match", [
    (dict(bits_init=1.0), "bits_init"), (dict(lr_multiplier=0), "lr_multiplier"),
    (dict(min_channels=-1), "min_channels")])
def test_bad_compressor_arguments_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    compressors.BitDepth(**bad)


def test_unknown_compressor_is_rejected():
  with pytest.raises(ValueError, match="Unknown compressor"):
    layers.Dense(3, compressor="nope")


def test_compressor_is_never_shared_between_layers():
  shared = compressors.BitDepth(bits_init=5)
  a, b = layers.Dense(2, compressor=shared), layers.Dense(2, compressor=shared)
  assert a.compressor is not b.compressor
  assert a.compressor.bits_init == b.compressor.bits_init == 5
