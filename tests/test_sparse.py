"""SparseBitDepth: a learned dead zone per channel (weight-level sparsity)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from selfcompress import codes as codes_lib
from selfcompress import config as config_lib
from selfcompress import training
from selfcompress.compressors import SparseBitDepth

L = keras.layers


def _dense(units, compressor, fan_in=6, seed=0):
  keras.utils.set_random_seed(seed)
  layer = sc.layers.Dense(units, compressor=compressor)
  layer.build((None, fan_in))
  return layer


def test_threshold_at_rounding_computes_what_bit_depth_does():
  """At t = 1/2 the dead zone is rounding's zero bin: the same kernel,
  output and gradients (weights, bit depth, exponent) as BitDepth."""
  rng = np.random.default_rng(0)
  plain, sparse = _dense(5, "bits"), _dense(5, "sparse_bits")
  sparse.kernel.assign(plain.kernel)
  sparse.bias.assign(rng.normal(size=5))
  plain.bias.assign(sparse.bias)
  for layer in (plain, sparse):
    layer.compressor.assign(bits=[3.0, 4.2, 2.5, 5.0, 3.7],
                            exponent=[-2.0, -3.0, -1.5, -4.0, -2.5])
  x = tf.constant(rng.normal(size=(7, 6)).astype("float32"))
  grads = []
  for layer in (plain, sparse):
    with tf.GradientTape() as tape:
      y = layer(x)
      loss = tf.reduce_sum(y * tf.range(1.0, 6.0))
    grads.append(tape.gradient(
        loss, [layer.kernel, layer.bias, layer.compressor.params]))
    np.testing.assert_array_equal(y, plain(x))
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_dead_zone_zeroes_small_weights_and_kills_empty_channels():
  # Exponents fit to a 4-bit grid: codes up to 7 in each channel.
  layer = _dense(4, SparseBitDepth(bits_init=4.0), fan_in=50)
  c = layer.compressor
  # Channel 3's threshold is above every code: all its weights are zeroed,
  # so it is dead: no bias, not counted, and shed() removes it.
  c.assign_threshold([0.5, 2.0, 5.0, 100.0])
  kernel, bias = layer.effective_weights()
  kernel, bias = np.asarray(kernel), np.asarray(bias)
  x = np.asarray(layer.kernel) / np.asarray(c.scale())
  t = np.asarray(c.threshold())
  assert np.all(kernel[np.abs(x) < t] == 0)
  zeros = (kernel == 0).mean(axis=0)
  assert zeros[0] < zeros[1] < zeros[2] < zeros[3] == 1.0
  np.testing.assert_array_equal(np.asarray(c.state().alive), [1, 1, 1, 0])
  assert bias[3] == 0 and np.all(bias[:3] == np.asarray(layer.bias)[:3])
  # The codes every export stores are the dead zone's.
  lc = codes_lib.of(layer)
  np.testing.assert_array_equal(lc.codes, np.asarray(c.codes(layer.kernel)[0]))
  assert lc.alive.tolist() == [True, True, True, False]


@pytest.mark.parametrize("inputs", [False, True])
def test_sparse_layers_shed_equal_and_round_trip(inputs, tmp_path):
  """Every layer has channels killed by their threshold and weights in the
  dead zone: shed() computes the same at the same size, and a `.keras`
  file restores it. (tests/test_entropy.py checks that size() counts the
  stream the SavedModel stores.)"""
  rng = np.random.default_rng(3)
  base = keras.Sequential([
      keras.Input((8, 8, 3)), L.Conv2D(8, 3, activation="relu"),
      L.Flatten(), L.Dense(12, activation="relu"), L.Dense(6)])
  compressor = SparseBitDepth(bits_init=4.0)
  if inputs:  # with input gates, some of them closed
    compressor = sc.compressors.InputGates(inner=compressor)
  model = sc.compress(base, compressor=compressor, protect_outputs=False)
  for layer in model.layers:
    if isinstance(layer, sc.layers.CompressedLayer):
      c = layer.compressor
      n = c.num_channels
      bits = rng.choice([3.0, 4.0, 4.5], n)
      t = rng.uniform(0.5, 3.0, n)
      # Two channels whose dead zone spans their grid (fit to their
      # largest weight at 4 bits): all their codes are 0.
      dead = rng.choice(n, 2, replace=False)
      bits[dead], t[dead] = 4.0, 1e4
      c.assign(bits=bits)
      c.assign_threshold(t)
      if inputs and layer.name != "conv2d":
        n_in = np.asarray(c.input_log_alpha()).size
        c.assign_input_log_alpha(np.where(rng.random(n_in) < 0.3, -6.0, 3.0))
  x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
  before = np.asarray(model(x))
  # The outputs (but the dead ones) depend on the input.
  assert before.std(axis=0).max() > 0.1 * np.abs(before).max()
  small = sc.shed(model)
  np.testing.assert_allclose(np.asarray(small(x)), before, atol=1e-5)
  assert small.count_params() < model.count_params()
  report = sc.size(model)
  assert report.bits == sc.size(small).bits
  for row in report.layers:
    assert row.channels_alive <= row.channels_total - 2, row
  path = str(tmp_path / "m.keras")
  model.save(path)
  np.testing.assert_array_equal(np.asarray(sc.load_model(path)(x)), before)


def test_penalty_widens_the_dead_zone_and_the_task_narrows_it():
  """The gradients point the right ways: the size penalty raises the
  thresholds (more zeros) where zeros are already common enough to be
  cheap; a task that needs every weight lowers them."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(256, 16)).astype("float32")
  # Codes spread over the 4-bit grid: a share of them is already 0, where
  # a coder spends less on zeros than on the others (at no zeros, the
  # first ones cost more than they save: the penalty then holds t).
  w = rng.choice([-1.0, 1.0], (16, 4)) * rng.uniform(0.0, 1.0, (16, 4))
  y = x @ w

  def model_at(start):
    keras.utils.set_random_seed(0)
    model = sc.compress(
        keras.Sequential([keras.Input((16,)), L.Dense(4, use_bias=False)]),
        compressor=SparseBitDepth(bits_init=4.0), gamma=0.0,
        protect_outputs=False)
    layer = model.layers[-1]
    layer.kernel.assign(w)
    layer.compressor.initialize(layer.kernel)  # codes up to 7
    layer.compressor.assign_threshold(start)
    return model, layer.compressor

  _, c = model_at(1.0)
  with tf.GradientTape() as tape:
    penalty = tf.reduce_sum(c.state().penalty_bits)
  assert np.all(np.asarray(tape.gradient(penalty, c.shrink_fraction)) < 0)

  model, c = model_at(4.0)
  model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
  layer = model.layers[-1]
  zeros = lambda: (np.asarray(layer.effective_weights()[0]) == 0).mean()
  fraction, share = np.asarray(c.shrink_fraction), zeros()
  model.fit(x, y, epochs=5, batch_size=32, verbose=0)
  assert np.all(np.asarray(c.shrink_fraction) < fraction - 0.1)
  assert zeros() < share / 2


def test_fixed_width_storage_is_refused():
  with pytest.raises(ValueError, match="storage='entropy'"):
    SparseBitDepth(storage="fixed")
  config = config_lib.base()
  config.compressor = "sparse_bits"
  with pytest.raises(sc.errors.ConfigError, match="storage=entropy"):
    training.validate(config)


def test_a_channel_read_only_through_closed_inputs_is_dead():
  """With input gates, the codes stored are those on open inputs: a
  channel whose only nonzero weights sit on closed inputs is dead (no
  bias), and shed() computes the same."""
  inp = keras.Input((6,))
  hidden = sc.layers.Dense(3, activation="relu", name="h", compressor=(
      sc.compressors.InputGates(inner=SparseBitDepth(bits_init=4.0))))(inp)
  model = keras.Model(inp, L.Dense(2)(hidden))
  layer = model.get_layer("h")
  kernel = np.random.default_rng(0).uniform(0.5, 1.0, (6, 3))
  kernel[2:, 0] = 0.0  # channel 0 reads inputs 0 and 1 only
  layer.kernel.assign(kernel)
  layer.bias.assign([1.0, 1.0, 1.0])
  c = layer.compressor
  c.initialize(layer.kernel)
  c.assign_input_log_alpha([-6.0, -6.0, 3.0, 3.0, 3.0, 3.0])
  np.testing.assert_array_equal(np.asarray(c.state().alive), [0, 1, 1])
  assert np.asarray(layer.effective_weights()[1])[0] == 0.0
  x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
  before = np.asarray(model(x))
  assert before.std(axis=0).min() > 0
  np.testing.assert_allclose(np.asarray(sc.shed(model)(x)), before, atol=1e-5)
