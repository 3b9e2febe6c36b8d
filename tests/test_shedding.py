"""shed(): the smaller model computes what the original did."""

import keras
import numpy as np
import pytest

import selfcompress as sc
from selfcompress import layers

L = keras.layers


def _randomize(model, rng):
  """Non-trivial BatchNorm statistics, so dead channels carry constants."""
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, n))
      layer.beta.assign(rng.normal(size=n))
      layer.moving_mean.assign(rng.normal(size=n) * 0.1)
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))


def _kill(model, rng, fraction=0.5):
  """Kills a random half of every compressed layer's channels: by their bit
  depth, their gate, or (gates and bits) either. Open gates get varied
  values in (0, 1], which scale their channels."""
  for layer in model.layers:
    if isinstance(layer, layers.CompressedLayer):
      c = layer.compressor
      n = c.num_channels
      dead = rng.random(n) < fraction
      if c.min_channels >= n:
        dead[:] = False
      has_bits, has_gate = hasattr(c, "assign"), hasattr(c, "assign_log_alpha")
      by_gate = dead & (rng.random(n) < 0.5) if has_bits else dead
      if has_bits:
        c.assign(bits=np.where(dead & ~by_gate, -1.0, 5.0))
      if has_gate:
        c.assign_log_alpha(np.where(by_gate, -6.0, rng.uniform(-2.0, 3.0, n)))


def mlp():
  return keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu"),
                           L.Dense(8, activation="tanh"), L.Dense(3)])


def conv_bn_flatten():
  return keras.Sequential([
      keras.Input((10, 10, 3)), L.Conv2D(8, 3, use_bias=False),
      L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(),
      L.Conv2D(6, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
      L.Flatten(), L.Dense(10, activation="relu"), L.Dense(4)])


def residual():
  inp = keras.Input((8, 8, 4))
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(inp)))
  y = L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(x)))
  y = L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(y))
  x = L.ReLU()(L.Add()([x, y]))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inp, L.Dense(3)(x))


def depthwise_separable():
  inp = keras.Input((9, 9, 3))
  x = L.ReLU()(L.Conv2D(8, 1)(inp))
  x = L.DepthwiseConv2D(3, depth_multiplier=2)(x)
  x = L.ReLU()(L.BatchNormalization()(x))
  x = L.Conv2D(5, 1, activation="relu")(x)
  a = L.Conv2D(4, 1)(x)
  b = L.Conv2D(4, 1)(x)
  x = L.Concatenate()([a, b])
  x = L.Flatten()(x)
  return keras.Model(inp, L.Dense(2)(x))


@pytest.mark.parametrize("compressor", ["bits", "gates", "gates+bits"])
@pytest.mark.parametrize("build", [mlp, conv_bn_flatten, residual,
                                   depthwise_separable])
def test_shed_model_equals_original_and_is_smaller(build, compressor):
  rng = np.random.default_rng(0)
  model = sc.compress(build(), min_channels=1, compressor=compressor)
  _randomize(model, rng)
  _kill(model, rng)
  x = rng.normal(size=(16,) + tuple(model.input_shape[1:])).astype("float32")
  before = np.asarray(model(x, training=False))
  small = sc.shed(model)
  after = np.asarray(small(x, training=False))
  np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
  assert small.count_params() < model.count_params()
  # Same size by the one accounting: dead channels were already not counted.
  assert sc.size(small).bits == sc.size(model).bits
  assert sc.size(small).compression_ratio == pytest.approx(
      sc.size(model).compression_ratio)
  # Shedding again changes nothing.
  again = sc.shed(small)
  assert again.count_params() == small.count_params()
  np.testing.assert_allclose(np.asarray(again(x, training=False)), after,
                             atol=1e-6)


def test_residual_channel_dead_in_one_branch_is_kept():
  # Default BatchNorm statistics: a dead channel is exactly 0 after ReLU, so
  # it can go even where a 'same'-padded convolution reads it.
  model = sc.compress(residual())
  convs = [l for l in model.layers if isinstance(l, layers.Conv2D)]
  first, last = convs[0], convs[2]
  first.compressor.assign(bits=[5, -1, 5, -1, 5, 5])  # dead: 1, 3
  last.compressor.assign(bits=[5, 5, 5, -1, 5, 5])   # dead: 3
  small = sc.shed(model)
  kept = [l for l in small.layers if isinstance(l, layers.Conv2D)]
  # Channel 1 is alive through the second branch; only 3 goes.
  assert kept[0].filters == 5 and kept[2].filters == 5
  x = np.random.default_rng(1).normal(size=(4, 8, 8, 4)).astype("float32")
  np.testing.assert_allclose(small(x), model(x), atol=1e-5)


def test_dead_constant_into_same_padding_is_kept_not_approximated():
  rng = np.random.default_rng(4)
  model = sc.compress(residual())
  _randomize(model, rng)  # dead channels now carry non-zero constants
  convs = [l for l in model.layers if isinstance(l, layers.Conv2D)]
  convs[0].compressor.assign(bits=[5, 5, 5, -1, 5, 5])
  convs[2].compressor.assign(bits=[5, 5, 5, -1, 5, 5])
  small = sc.shed(model)
  assert small.count_params() == model.count_params()
  x = rng.normal(size=(4, 8, 8, 4)).astype("float32")
  np.testing.assert_allclose(small(x), model(x), atol=1e-5)


def inverted_residual():
  """expand -> BatchNorm -> ReLU6 -> depthwise -> BatchNorm -> ReLU6 ->
  project -> BatchNorm, plus the input (MobileNetV2's block)."""
  inp = keras.Input((6, 6, 4))
  x = L.Conv2D(4, 1, name="expand")(inp)
  x = L.ReLU(6.0)(L.BatchNormalization(name="expand_bn")(x))
  x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
  x = L.ReLU(6.0)(L.BatchNormalization()(x))
  x = L.BatchNormalization()(L.Conv2D(4, 1, name="project")(x))
  x = L.GlobalAveragePooling2D()(L.Add()([inp, x]))
  return keras.Model(inp, L.Dense(3)(x))


def _assert_shed_computes_the_same(model, x):
  before = np.asarray(model(x, training=False))
  assert before.std(axis=0).mean() > 0.1 * np.abs(before).max()  # uses x
  np.testing.assert_allclose(np.asarray(sc.shed(model)(x, training=False)),
                             before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("compressor", ["bits", "gates", "gates+bits"])
def test_shed_keeps_the_channels_min_channels_ranks(compressor):
  """`min_channels` holds the top channels (by bit depth or gate) that would
  otherwise die. The depthwise layer's top channel reads a dead input, so
  the channel graph counts it dead; were shed() to remove it, the smaller
  layer would rank another channel top and hold it: lift its bit depth
  (bits), or revive it (gates; gates+bits), though the model lets it die."""
  model = sc.compress(inverted_residual(), compressor=compressor,
                      min_channels=1)
  # Expand channel 0 dies; ReLU6 makes its constant exactly 0, so the
  # depthwise channel 0 computes a constant whatever it holds.
  model.get_layer("expand_bn").beta.assign([-1.0, 0.0, 0.0, 0.0])
  expand = model.get_layer("expand").compressor
  depthwise = model.get_layer("depthwise").compressor
  if compressor == "bits":
    expand.assign(bits=[-1.0, 8.0, 8.0, 8.0])
    depthwise.assign(bits=[8.0, 1.5, 1.4, 1.3])  # 1.5 < held_bits
  elif compressor == "gates":
    expand.assign_log_alpha([-6.0, 3.0, 3.0, 3.0])
    depthwise.assign_log_alpha([3.0, -6.0, -6.0, -6.0])  # 1 to 3 closed
  else:
    expand.assign_log_alpha([1.0, 3.0, 2.0, 2.5])
    expand.assign(bits=[-1.0, 8.0, 8.0, 8.0])
    depthwise.assign_log_alpha([3.0, 2.5, 1.0, 1.0])
    depthwise.assign(bits=[8.0, -1.0, 8.0, 8.0])  # 1 dead by its bits
  x = np.random.default_rng(0).normal(size=(8, 6, 6, 4)).astype("float32")
  _assert_shed_computes_the_same(model, x)


@pytest.mark.parametrize("compressor", ["gates", "gates+bits"])
def test_shed_to_min_channels_keeps_the_layer_gated(compressor):
  """A layer with no more channels than `min_channels` is not gated (the
  protected logits): shedding a gated layer down to that many channels must
  not switch its gates off, nor lift its bit depths."""
  model = sc.compress(mlp(), compressor=compressor, min_channels=1)
  hidden = [l for l in model.layers
            if isinstance(l, layers.CompressedLayer)][0]
  hidden.compressor.assign_log_alpha([1.0] + [-6.0] * 15)  # gate 0.78 on 0
  if compressor == "gates+bits":
    hidden.compressor.assign(bits=[1.5] + [8.0] * 15)  # < held_bits
  x = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
  _assert_shed_computes_the_same(model, x)


def test_logits_and_outputs_keep_every_channel():
  """shed() keeps every channel of a model output, dead or not, by its own
  rule: compress()'s protection of the logits (`protect_outputs`,
  `min_channels`) is switched off here, and two of the three logits are
  killed, so nothing else keeps them."""
  rng = np.random.default_rng(2)
  model = sc.compress(mlp(), protect_outputs=False, min_channels=0)
  _kill(model, rng)
  logits = model.layers[-1]
  logits.compressor.assign(bits=[5.0, -1.0, -1.0])
  g = sc.ChannelGraph.of(model)
  (output,) = g.output_keys
  assert np.asarray(g.propagate().tensors[output]).tolist() == [1, 0, 0]
  x = rng.normal(size=(16, 12)).astype("float32")
  small = sc.shed(model)
  assert small.output_shape == model.output_shape == (None, 3)
  assert small.layers[-1].units == 3
  np.testing.assert_allclose(small(x, training=False),
                             model(x, training=False), atol=1e-5, rtol=0)
  # The hidden layers did shed (the rule is the outputs', not everyone's).
  assert small.count_params() < model.count_params()


def test_shed_keeps_options_and_trains_on():
  rng = np.random.default_rng(3)
  model = sc.compress(mlp(), gamma=0.3, target_kb=0.5)
  _kill(model, rng)
  small = sc.shed(model)
  assert (small.gamma, small.target_kb) == (0.3, 0.5)
  assert small.size_reference == model.size_reference
  small.compile(keras.optimizers.Adam(1e-2),
                keras.losses.SparseCategoricalCrossentropy(True))
  x, y = _blobs(n=256)
  before = [np.array(v) for v in small.trainable_variables]
  history = small.fit(x, y, epochs=5, batch_size=32, verbose=0).history
  # It learns: the loss falls and every trainable variable moved.
  assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
  moved = [not np.array_equal(b, np.asarray(v))
           for b, v in zip(before, small.trainable_variables)]
  assert all(moved), [v.path for v, m in zip(small.trainable_variables, moved)
                      if not m]
  # Its size is measured against the original network: the logged size is
  # the accounting's, and the ratio uses the unshed float32 reference.
  assert history["size_kb"][-1] == pytest.approx(sc.size(small).kb, rel=1e-5)
  assert history["compression_ratio"][-1] == pytest.approx(
      model.size_reference["float_bits"] / sc.size(small).bits, rel=1e-5)


def _blobs(n=2048, dim=12, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(scale=2.0, size=(classes, dim))
  y = rng.integers(0, classes, n)
  return (centers[y] + rng.normal(size=(n, dim))).astype("float32"), y


def _compiled(gamma=0.5):
  model = sc.compress(keras.Sequential([
      keras.Input((12,)), L.Dense(64, activation="relu"),
      L.Dense(32, activation="relu"), L.Dense(3)]), gamma=gamma)
  model.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(True))
  return model


def test_swap_carries_optimizer_state_and_loss():
  x, y = _blobs()
  model = _compiled()
  model.fit(x, y, epochs=4, batch_size=64, verbose=0)
  small = sc.shed(model)
  assert small.count_params() < model.count_params()
  from selfcompress import shedding
  shedding.carry_optimizer(model, small)
  before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
  after = small.evaluate(x, y, verbose=0, return_dict=True)["loss"]
  assert after == pytest.approx(before, abs=1e-5)
  old_opt, new_opt = model.optimizer, small.optimizer
  assert int(new_opt.iterations) == int(old_opt.iterations) > 0
  # The last layer keeps its 3 outputs: its bias moments carry over whole.
  i_old = old_opt._get_variable_index(model.layers[-1].bias)
  i_new = new_opt._get_variable_index(small.layers[-1].bias)
  np.testing.assert_array_equal(new_opt._momentums[i_new],
                                old_opt._momentums[i_old])
  np.testing.assert_array_equal(new_opt._velocities[i_new],
                                old_opt._velocities[i_old])


def test_fit_and_shed_shrinks_during_training_without_a_loss_jump():
  x, y = _blobs()
  model = _compiled()
  start = model.count_params()
  final, history = sc.fit_and_shed(model, _xy(x, y),
                                   epochs=8, shed_every_epochs=2, verbose=0)
  assert final.count_params() < start
  losses = history.history["loss"]
  assert len(losses) == 8 and history.epoch == list(range(8))
  for boundary in (2, 4, 6):  # the epoch after each swap
    assert losses[boundary] <= losses[boundary - 1] * 1.15, losses
  assert history.history["size_kb"][-1] == pytest.approx(sc.size(final).kb,
                                                         rel=1e-5)


class _Fits(keras.callbacks.Callback):
  """Counts the `fit` calls it is handed to (`on_train_begin`)."""

  def __init__(self, stop_after=None):
    super().__init__()
    self.fits, self.stop_after = 0, stop_after

  def on_train_begin(self, logs=None):
    self.fits += 1

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.stop_after:
      self.model.stop_training = True


def test_fit_and_shed_keeps_one_fit_while_shedding_does_not_pay():
  x, y = _blobs()
  # No shed removes every parameter: one fit for every epoch.
  fits = _Fits()
  model = _compiled()
  start = model.count_params()
  final, history = sc.fit_and_shed(model, _xy(x, y), epochs=4,
                                   shed_every_epochs=1, min_reduction=1.0,
                                   callbacks=[fits], verbose=0)
  assert final is model and final.count_params() == start
  assert fits.fits == 1 and history.epoch == [0, 1, 2, 3]
  # Any shed pays: a new fit after each one, every epoch still trained once.
  fits = _Fits()
  final, history = sc.fit_and_shed(_compiled(), _xy(x, y), epochs=4,
                                   shed_every_epochs=2, min_reduction=0.0,
                                   callbacks=[fits], verbose=0)
  assert final.count_params() < start
  assert fits.fits == 2 and history.epoch == [0, 1, 2, 3]
  # A callback that stops training ends it, even where a shed would pay.
  fits = _Fits(stop_after=1)
  final, history = sc.fit_and_shed(_compiled(), _xy(x, y), epochs=4,
                                   shed_every_epochs=2, min_reduction=0.0,
                                   callbacks=[fits], verbose=0)
  assert fits.fits == 1 and history.epoch == [0, 1]
  assert final.count_params() == start


def _xy(x, y):
  import tensorflow as tf
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(64)


def test_settled_statistics_make_inference_normalise_dead_channels_as_training():
  """A BatchNormalization after dead channels: training mode (batch
  statistics) gives `beta` there; after `settle_statistics` inference does
  too, on every position, while alive channels keep their statistics; and
  fit() leaves them settled."""
  rng = np.random.default_rng(3)
  model = sc.compress(residual(), compressor="bits", min_channels=0)
  _randomize(model, rng)
  _kill(model, rng)
  x = rng.normal(size=(16, 8, 8, 4)).astype("float32")
  norms = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
  probe = keras.Model(model.inputs, [n.output for n in norms])
  before = [keras.ops.convert_to_numpy(n.moving_mean) for n in norms]
  flow = sc.graph.ChannelGraph.of(model).propagate()
  dead = [keras.ops.convert_to_numpy(flow.norm_inputs[n][0][0]) == 0
          for n in norms]
  assert all(d.any() and not d.all() for d in dead)
  changed = sc.shedding.settle_statistics(model)
  assert changed == sum(int(d.sum()) for d in dead)
  for n, d, old in zip(norms, dead, before):  # alive channels: untouched
    now = keras.ops.convert_to_numpy(n.moving_mean)
    np.testing.assert_array_equal(now[~d], old[~d])
    assert (now[d] != old[d]).all()
  trained = probe(x, training=True)  # (moves the alive channels' means)
  inferred = probe(x, training=False)
  for n, d, t, i in zip(norms, dead, trained, inferred):
    t, i = np.asarray(t)[..., d], np.asarray(i)[..., d]
    np.testing.assert_allclose(i, t, atol=1e-5)
    np.testing.assert_allclose(i, np.broadcast_to(
        keras.ops.convert_to_numpy(n.beta)[d], i.shape), atol=1e-5)
  assert sc.shedding.settle_statistics(model) == 0
  # shed() keeps computing what the (settled) model does.
  small = sc.shed(model)
  np.testing.assert_allclose(small.predict(x, verbose=0),
                             model.predict(x, verbose=0), atol=1e-5)
  # fit() settles them (before validation, at epoch ends, at the end).
  fresh = sc.compress(residual(), compressor="bits", min_channels=0)
  _randomize(fresh, rng)
  _kill(fresh, rng)
  fresh.compile(keras.optimizers.Adam(1e-4), "mse")
  y = rng.normal(size=(16, 3)).astype("float32")
  fresh.fit(x, y, epochs=1, batch_size=8, validation_data=(x, y), verbose=0)
  assert sc.shedding.settle_statistics(fresh) == 0
