"""Input gates (`compressors.InputGates`, "inputs+bits", ...): L0 gates on
each layer's inputs. The forward pass, the channel graph's fan-in, the size
accounting by hand, shedding (with the gather in front of a layer whose
inputs cannot leave their producer), `.keras` and SavedModel round trips,
serialisation, compress() selection, Keras' layer harness and training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized
from keras.src import testing

import selfcompress as sc
from selfcompress import accounting, compressors, layers
from selfcompress.compressors import gates
from selfcompress.compressors.inputs import InputGates
from selfcompress.graph import ChannelGraph
from selfcompress.layers.base import keras_parent

from test_shedding import _kill, _randomize

L = keras.layers
CLOSED, OPEN = -8.0, 3.0
INNER = ["bits", "gates", "gates+bits"]


def _p_open(log_alpha):
  """P(z != 0) of a hard-concrete gate."""
  beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1
  return 1.0 / (1.0 + np.exp(-(log_alpha - beta * np.log(-gamma / zeta))))


def _compressed(model):
  return [l for l in model._flatten_layers(include_self=False)
          if isinstance(l, layers.CompressedLayer)]


def _close_inputs(model, rng, fraction=0.4):
  """Closes a random `fraction` of every input-gated layer's inputs; the
  open gates get varied test-time values in (0, 1], which scale them."""
  for layer in _compressed(model):
    c = layer.compressor
    if isinstance(c, InputGates):
      n = c.num_inputs
      closed = rng.random(n) < fraction
      closed[rng.integers(n)] = False  # reads something
      c.assign_input_log_alpha(
          np.where(closed, CLOSED, rng.uniform(-1.0, 3.0, n)))


# -- the forward pass ---------------------------------------------------------


@pytest.mark.parametrize("inner", INNER)
def test_closed_inputs_are_exact_zeros_in_training_and_at_test(inner):
  layer = layers.Dense(5, compressor=f"inputs+{inner}")
  layer.build((None, 6))
  c = layer.compressor
  log_alpha = np.array([OPEN, CLOSED, 0.5, CLOSED, -1.0, OPEN], "float32")
  c.assign_input_log_alpha(log_alpha)
  closed = log_alpha == CLOSED
  for training in (False, True):
    kernel, _ = layer.effective_weights(training=training)
    kernel = np.asarray(kernel)
    np.testing.assert_array_equal(kernel[closed], 0.0)
    assert np.all(np.abs(kernel[~closed]).sum(axis=1) > 0)
  # At test time an open gate scales its row by the deterministic gate.
  z = np.asarray(gates.test_gate(log_alpha))
  np.testing.assert_allclose(np.asarray(c.input_gates(False)), z, rtol=1e-6)
  # The output does not depend on closed inputs, and does on open ones.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6)).astype("float32")
  y = np.asarray(layer(x))
  x2 = x.copy()
  x2[:, closed] = rng.normal(size=(8, closed.sum()))
  np.testing.assert_array_equal(np.asarray(layer(x2)), y)
  x2[:, 0] += 1.0
  assert not np.allclose(np.asarray(layer(x2)), y)


def test_sampled_gates_are_fresh_each_step_and_mean_right():
  layer = layers.Dense(1, compressor="inputs+gates", min_channels=1)
  layer.build((None, 2000))
  c = layer.compressor
  c.assign_input_log_alpha(0.5)
  draws = np.stack([np.asarray(c.input_gates(True)) for _ in range(20)])
  assert not np.array_equal(draws[0], draws[1])
  t = np.linspace(0.0, 1.0, 20_001)
  beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1
  survival = 1 / (1 + np.exp(-(0.5 - beta * np.log(
      (t - gamma) / (zeta - t)))))
  assert draws.mean() == pytest.approx(np.trapezoid(survival, t), abs=0.01)


def test_input_state_is_exact_and_expected_count_differentiable():
  layer = layers.Dense(3, compressor="inputs+bits")
  layer.build((None, 4))
  c = layer.compressor
  log_alpha = np.array([OPEN, CLOSED, 0.0, -3.0], "float32")
  c.assign_input_log_alpha(log_alpha)
  state = c.input_state()
  np.testing.assert_array_equal(state.alive, [1, 0, 1, 0])
  np.testing.assert_allclose(state.expected, _p_open(log_alpha), rtol=1e-5)
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(c.input_state().expected)
  grad = tape.gradient(total, c.input_log_alpha_param)
  p = _p_open(log_alpha)
  np.testing.assert_allclose(grad, p * (1 - p) * c.input_gate_lr_multiplier,
                             rtol=1e-4)


def test_min_inputs_holds_the_strongest_gates_open():
  layer = layers.Dense(2, compressor=InputGates("bits", min_inputs=2))
  layer.build((None, 4))
  c = layer.compressor
  c.assign_input_log_alpha([-5.0, -4.0, -9.0, -6.0])  # all closed
  np.testing.assert_array_equal(c.held_inputs(), [1, 1, 0, 0])
  np.testing.assert_array_equal(c.input_state().alive, [1, 1, 0, 0])
  np.testing.assert_array_equal(c.input_state().expected[:2], [1, 1])
  np.testing.assert_array_equal(c.input_gates(True)[:2], [1, 1])
  np.testing.assert_array_equal(c.pinned_inputs(), [1, 1, 0, 0])


# -- the channel graph and the size accounting -------------------------------


def _two_dense():
  inp = keras.Input((4,))
  x = layers.Dense(3, compressor="inputs+bits", name="d1")(inp)
  out = layers.Dense(2, compressor="inputs+bits", name="d2")(x)
  model = keras.Model(inp, out)
  d1, d2 = model.get_layer("d1"), model.get_layer("d2")
  d1.compressor.assign(bits=[3.0, 2.5, -1.0])   # channel 2 dead
  d1.compressor.assign_input_log_alpha([OPEN, CLOSED, OPEN, OPEN])
  d2.compressor.assign(bits=[2.0, 5.0])
  # d2 reads d1's channel 0; its gate on channel 1 is closed, so nobody
  # reads that channel: it is dead as well.
  d2.compressor.assign_input_log_alpha([OPEN, CLOSED, OPEN])
  return model


def test_fan_in_counts_open_inputs_fed_by_alive_channels():
  model = _two_dense()
  d1, d2 = model.get_layer("d1"), model.get_layer("d2")
  flow = ChannelGraph.of(model).propagate()
  np.testing.assert_array_equal(flow.fan_in[d1], [3, 3, 3])
  np.testing.assert_array_equal(flow.in_alive[d1], [1, 0, 1, 1])
  np.testing.assert_array_equal(flow.fan_in[d2], [1, 1])
  # d1's channel 1 is unread, channel 2 has no bits.
  np.testing.assert_array_equal(flow.out_alive[d1], [1, 0, 0])
  np.testing.assert_array_equal(flow.out_alive[d2], [1, 1])
  # The penalty's fan-in: the expected number of open inputs among those
  # fed by alive channels (d1's liveness before its consumers is [1, 1, 0]);
  # 0 on a channel nobody reads (d1's channel 1).
  p = _p_open(np.array([OPEN, CLOSED], "float32"))
  np.testing.assert_allclose(flow.penalty_fan_in[d1],
                             np.array([1, 0, 1]) * (3 * p[0] + p[1]),
                             rtol=1e-5)
  np.testing.assert_allclose(flow.penalty_fan_in[d2], [p.sum()] * 2,
                             rtol=1e-5)


def test_penalty_fan_in_has_gradient_to_the_input_gates_only():
  model = _two_dense()
  d1 = model.get_layer("d1")
  c = d1.compressor
  graph = ChannelGraph.of(model)
  with tf.GradientTape(persistent=True) as tape:
    flow = graph.propagate()
    expected = tf.reduce_sum(flow.penalty_fan_in[d1])
    exact = tf.reduce_sum(flow.fan_in[d1])
  la = np.asarray(c.input_log_alpha())
  p = _p_open(la)
  grad = tape.gradient(expected, c.input_log_alpha_param)
  # Two of d1's channels are read: each counts every input's P(z != 0).
  np.testing.assert_allclose(grad, 2 * p * (1 - p) * c.input_gate_lr_multiplier,
                             rtol=1e-4)
  assert tape.gradient(exact, c.input_log_alpha_param) is None


def test_size_matches_hand_computation():
  report = sc.size(_two_dense())
  d1, d2 = report.layers
  # d1: 3 of 4 inputs open; only channel 0 alive (ceil(3) = 3 bits):
  # 3 weights x 3 bits, plus 32 (bias) + 40 (bit depth, scale).
  assert (d1.inputs_alive, d1.inputs_total) == (3, 4)
  assert (d1.channels_alive, d1.weights_alive) == (1, 3)
  assert d1.weight_bits == 3 * 3 and d1.other_bits == 72
  # d2: reads only d1's channel 0: 1 weight per channel at 2 and 5 bits.
  assert (d2.inputs_alive, d2.inputs_total) == (1, 3)
  assert (d2.channels_alive, d2.weights_alive) == (2, 2)
  assert d2.weight_bits == 2 + 5 and d2.other_bits == 2 * 72
  assert report.bits == 9 + 72 + 7 + 144 == 232


def test_convolution_fan_in_counts_the_kernel_area():
  inp = keras.Input((6, 6, 3))
  x = layers.Conv2D(4, 3, compressor="inputs+bits", name="c1")(inp)
  out = layers.Conv2D(2, 1, compressor="inputs+bits", name="c2")(x)
  model = keras.Model(inp, out)
  c1, c2 = model.get_layer("c1"), model.get_layer("c2")
  c1.compressor.assign_input_log_alpha([OPEN, CLOSED, 0.0])
  c1.compressor.assign(bits=[3.0, 2.0, 4.0, 2.0])
  c2.compressor.assign_input_log_alpha([OPEN, OPEN, OPEN, CLOSED])
  c2.compressor.assign(bits=[2.0, 1.0])
  flow = ChannelGraph.of(model).propagate()
  np.testing.assert_array_equal(flow.fan_in[c1], [18] * 4)
  p = _p_open(np.array([OPEN, CLOSED, 0.0], "float32"))
  np.testing.assert_allclose(flow.penalty_fan_in[c1],
                             [9 * p.sum()] * 3 + [0], rtol=1e-5)
  report = sc.size(model)
  # c1: 2 of 3 inputs x 3 x 3 taps; its channel 3 is read by nobody.
  assert report.layer("c1").weights_alive == 18 * 3
  assert report.layer("c1").weight_bits == 18 * (3 + 2 + 4)
  assert report.layer("c2").weight_bits == 3 * (2 + 1)


def test_lenet_first_layer_counts_only_the_open_pixels():
  model = sc.compress(keras.Sequential([
      keras.Input((8, 8)), L.Flatten(), L.Dense(5, activation="relu",
                                                name="fc1"),
      L.Dense(3, name="fc2")]), compressor="inputs+bits")
  fc1 = model.get_layer("fc1")
  border = np.ones((8, 8), bool)
  border[1:7, 1:7] = False
  fc1.compressor.assign_input_log_alpha(
      np.where(border.reshape(-1), CLOSED, OPEN))
  fc1.compressor.assign(bits=[3.0, 3.0, 2.0, 2.0, 1.0])
  row = sc.size(model).layer("fc1")
  assert (row.inputs_alive, row.inputs_total) == (36, 64)
  assert row.weights_alive == 36 * 5
  assert row.weight_bits == 36 * (3 + 3 + 2 + 2 + 1)


# -- shedding ---------------------------------------------------------------


def flat_mlp():
  return keras.Sequential([
      keras.Input((6, 6)), L.Flatten(), L.Dense(12, activation="relu"),
      L.Dense(8, activation="tanh"), L.Dense(3)])


def conv_conv():
  return keras.Sequential([
      keras.Input((8, 8, 3)), L.Conv2D(8, 3, activation="relu"),
      L.Conv2D(6, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
      L.Flatten(), L.Dense(4)])


def branches():
  """A model input read by two layers, and a tensor read by two layers."""
  inp = keras.Input((10,))
  a = L.Dense(8, activation="relu", name="a")(inp)
  b = L.Dense(6, activation="relu", name="b")(inp)
  c = L.Dense(5, activation="relu", name="c")(a)
  d = L.Dense(5, activation="relu", name="d")(a)
  x = L.Concatenate()([c, d, b])
  return keras.Model(inp, L.Dense(3, name="out")(x))


def _shed_and_check(model, x):
  before = np.asarray(model(x, training=False))
  # The outputs really depend on the inputs, and the shed model's equal
  # them to much less than they vary.
  spread = before.std(axis=0).min()
  assert spread > 1e-4
  atol = min(1e-5, 1e-3 * spread)
  small = sc.shed(model)
  after = np.asarray(small(x, training=False))
  np.testing.assert_allclose(after, before, atol=atol, rtol=0)
  assert sc.size(small).bits == sc.size(model).bits
  # Every input-gated layer reads only its open, alive inputs.
  for layer in _compressed(small):
    c = layer.compressor
    if isinstance(c, InputGates):
      assert c.num_inputs == int(np.asarray(c.input_state().alive).sum())
  again = sc.shed(small)
  assert again.count_params() == small.count_params()
  assert len(again.layers) == len(small.layers)
  np.testing.assert_allclose(np.asarray(again(x, training=False)), after,
                             atol=atol)
  return small


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("build", [flat_mlp, conv_conv, branches])
def test_shed_removes_closed_inputs_and_computes_the_same(build, inner):
  rng = np.random.default_rng(1)
  model = sc.compress(build(), compressor=f"inputs+{inner}")
  _randomize(model, rng)
  _kill(model, rng, fraction=0.3)
  _close_inputs(model, rng)
  x = rng.normal(size=(16,) + tuple(model.input_shape[1:])).astype("float32")
  small = _shed_and_check(model, x)
  assert small.count_params() < model.count_params()
  selects = [l for l in small._flatten_layers()
             if isinstance(l, layers.SelectChannels)]
  # The first layer reads the model input (or a Flatten of it), which
  # cannot lose channels: a gather selects what it reads.
  assert selects


def test_closed_inputs_leave_the_producer_when_nobody_reads_them():
  rng = np.random.default_rng(2)
  model = sc.compress(conv_conv(), compressor="inputs+bits")
  conv1, conv2, fc = _compressed(model)
  conv1.compressor.assign_input_log_alpha([OPEN, CLOSED, OPEN])
  conv2.compressor.assign_input_log_alpha(
      [OPEN, CLOSED, OPEN, CLOSED, OPEN, OPEN, CLOSED, OPEN])
  # fc reads the 6 x 6 x 6 flattened positions: close every position of
  # conv2's channel 5, and the first row of the others.
  closed = np.zeros((6, 6, 6), bool)
  closed[..., 5] = True
  closed[0, :, :] = True
  fc.compressor.assign_input_log_alpha(
      np.where(closed.reshape(-1), CLOSED, OPEN))
  x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
  small = _shed_and_check(model, x)
  s_conv1, s_conv2, s_fc = _compressed(small)
  assert s_conv1.filters == 5 and s_conv2.filters == 5
  assert tuple(s_conv1.kernel_variable.shape[2:]) == (2, 5)
  assert tuple(s_conv2.kernel_variable.shape[2:]) == (5, 5)
  # fc: conv2's channel 5 went with the producer; row 0 is gathered away.
  assert s_fc.kernel_variable.shape[0] == 5 * 6 * 5
  selects = {l.name: l for l in small.layers
             if isinstance(l, layers.SelectChannels)}
  assert selects[conv1.name + "_inputs"].indices == [0, 2]
  assert selects[conv1.name + "_inputs"].axis == 3
  assert len(selects) == 2  # in front of conv1 and of fc


def test_a_layer_left_with_min_inputs_keeps_its_gate_values():
  """An open gate scales its input whatever the number of inputs: a layer
  shed down to `min_inputs` inputs must not lose its gates."""
  model = sc.compress(conv_conv(), compressor="inputs+bits")
  conv1 = _compressed(model)[0]
  conv1.compressor.assign_input_log_alpha([CLOSED, -0.5, CLOSED])  # z ~ 0.36
  x = np.random.default_rng(7).normal(size=(8, 8, 8, 3)).astype("float32")
  small = _shed_and_check(model, x)
  assert _compressed(small)[0].compressor.num_inputs == 1


def siamese():
  """One layer called on a model input and on another layer's output."""
  a, b = keras.Input((10,)), keras.Input((10,))
  shared = L.Dense(6, activation="relu", name="shared")
  x = L.Concatenate()([shared(a), shared(L.Dense(10, name="pre")(b))])
  return keras.Model([a, b], L.Dense(3, name="out")(x))


@pytest.mark.parametrize("inner", ["bits", "gates+bits"])
def test_a_shared_layer_gets_a_gather_per_call(inner):
  rng = np.random.default_rng(8)
  model = sc.compress(siamese(), compressor=f"inputs+{inner}")
  _kill(model, rng, fraction=0.3)
  _close_inputs(model, rng)
  xs = [rng.normal(size=(16, 10)).astype("float32") for _ in range(2)]
  before = np.asarray(model(xs, training=False))
  assert before.std(axis=0).min() > 1e-4
  small = sc.shed(model)
  np.testing.assert_allclose(np.asarray(small(xs, training=False)), before,
                             atol=1e-6, rtol=0)
  assert small.count_params() < model.count_params()
  assert sc.size(small).bits == sc.size(model).bits
  # Shedding again may take out a dead channel the first pass kept (the
  # union of the shared layer's calls kept it, a gather now skips it).
  again = sc.shed(small)
  assert again.count_params() <= small.count_params()
  np.testing.assert_allclose(np.asarray(again(xs, training=False)), before,
                             atol=1e-6, rtol=0)


def test_shedding_again_narrows_the_gather_instead_of_adding_one():
  rng = np.random.default_rng(3)
  model = sc.compress(flat_mlp(), compressor="inputs+bits")
  _close_inputs(model, rng)
  x = rng.normal(size=(16, 6, 6)).astype("float32")
  small = _shed_and_check(model, x)
  first = _compressed(small)[0]
  n = first.compressor.num_inputs
  la = np.array(first.compressor.input_log_alpha())
  la[: n // 2] = CLOSED
  first.compressor.assign_input_log_alpha(la)
  smaller = _shed_and_check(small, x)

  def selects(m):
    return {l.name: l for l in m.layers
            if isinstance(l, layers.SelectChannels)}
  # The same gathers (none added), the first one narrowed.
  assert set(selects(smaller)) == set(selects(small))
  assert len(selects(smaller)[first.name + "_inputs"].indices) == n - n // 2
  assert _compressed(smaller)[0].compressor.num_inputs == n - n // 2


def test_shed_model_round_trips_through_keras_files(tmp_path):
  rng = np.random.default_rng(4)
  model = sc.compress(flat_mlp(), compressor="inputs+gates+bits")
  _close_inputs(model, rng)
  x = rng.normal(size=(16, 6, 6)).astype("float32")
  expected = np.asarray(model(x, training=False))
  model.save(tmp_path / "compressed.keras")
  loaded = sc.load_model(tmp_path / "compressed.keras")
  np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected,
                             atol=1e-6)
  for a, b in zip(_compressed(model), _compressed(loaded)):
    assert isinstance(b.compressor, InputGates)
    assert b.compressor.get_config() == a.compressor.get_config()
    np.testing.assert_array_equal(b.compressor.input_log_alpha(),
                                  a.compressor.input_log_alpha())
  small = sc.shed(model)
  small.save(tmp_path / "shed.keras")
  loaded = sc.load_model(tmp_path / "shed.keras")
  assert any(isinstance(l, layers.SelectChannels) for l in loaded.layers)
  np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected,
                             atol=1e-5)


def test_shed_model_carries_optimizer_state():
  from selfcompress import shedding
  rng = np.random.default_rng(5)
  # gamma=0: the loss is the data loss, which shedding keeps exactly. (The
  # penalty loses the closed gates' small P(z != 0) with their weights.)
  model = sc.compress(flat_mlp(), compressor="inputs+bits", gamma=0.0)
  model.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=False)  # four short runs: XLA would compile four
  x = rng.normal(size=(64, 6, 6)).astype("float32")
  y = rng.integers(0, 3, 64)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0)
  _close_inputs(model, rng)
  small = sc.shed(model)
  shedding.carry_optimizer(model, small)
  before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
  after = small.evaluate(x, y, verbose=0, return_dict=True)["loss"]
  assert after == pytest.approx(before, abs=1e-5)
  small.fit(x, y, epochs=1, batch_size=32, verbose=0)


def test_export_serves_what_the_model_computes(tmp_path):
  rng = np.random.default_rng(6)
  model = sc.compress(conv_conv(), compressor="inputs+bits")
  _randomize(model, rng)
  _kill(model, rng, fraction=0.3)
  _close_inputs(model, rng)
  for layer in _compressed(model):  # varied bit depths on alive channels
    bits = np.asarray(layer.compressor.raw_bits())
    layer.compressor.assign(
        bits=np.where(bits > 0, rng.uniform(1.2, 7.9, bits.size), bits))
  x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
  expected = np.asarray(model(x, training=False))
  sc.export(model, tmp_path / "export")
  loaded = tf.saved_model.load(str(tmp_path / "export"))
  fn = loaded.signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  served = fn(**{name: tf.constant(x)})["output"].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


# -- choosing and serialising the compressor ---------------------------------


def test_names_and_configs_round_trip():
  c = compressors.get("inputs+gates+bits", bits_init=6, log_alpha_init=1.0,
                      min_channels=2, min_inputs=3, input_log_alpha_init=2.0)
  assert isinstance(c, InputGates)
  assert isinstance(c.inner, compressors.GatedBitDepth)
  assert (c.inner.bits_init, c.inner.log_alpha_init) == (6.0, 1.0)
  assert (c.min_channels, c.min_inputs, c.input_log_alpha_init) == (2, 3, 2.0)
  again = compressors.get(compressors.serialize(c))
  assert type(again) is InputGates and again.get_config() == c.get_config()
  # An override reaches the inner compressor; the copy is a new object.
  held = compressors.get(c, min_channels=5)
  assert held.min_channels == 5 and held.inner is not c.inner
  for name, inner in [("inputs+bits", compressors.BitDepth),
                      ("inputs+gates", compressors.HardConcreteGate)]:
    assert type(compressors.get(name).inner) is inner
  assert "inputs+bits" in compressors.names()
  assert repr(compressors.get("inputs+bits")).startswith("InputGates(")


def test_wrong_arguments_are_named():
  with pytest.raises(TypeError, match="BitDepth.*log_alpha_init"):
    compressors.get("inputs+bits", log_alpha_init=1.0)
  with pytest.raises(TypeError, match="cannot wrap"):
    InputGates("inputs+bits")
  with pytest.raises(ValueError, match="min_inputs"):
    InputGates("bits", min_inputs=-1)
  with pytest.raises(ValueError, match="cannot gate its inputs"):
    layers.DepthwiseConv2D(3, compressor="inputs+bits")
  with pytest.raises(ValueError, match="cannot gate its inputs"):
    layers.Conv2D(4, 1, groups=2, compressor="inputs+bits")


def test_compress_chooses_input_gates_per_layer():
  inp = keras.Input((8, 8, 4))
  x = L.Conv2D(6, 1, name="conv")(inp)
  x = L.DepthwiseConv2D(3, name="dw")(x)
  x = L.SeparableConv2D(5, 3, name="sep")(x)
  x = L.Flatten()(x)
  x = L.Dense(7, name="fc")(x)
  model = keras.Model(inp, L.Dense(3, name="out")(x))
  m = sc.compress(model, compressor="inputs+bits",
                  per_layer={"fc": InputGates("gates", min_inputs=4),
                             "out": "bits"})
  kinds = {l.name: (type(l.compressor).__name__,
                    type(getattr(l.compressor, "inner", l.compressor)).__name__)
           for l in _compressed(m)}
  assert kinds == {
      "conv": ("InputGates", "BitDepth"),
      "dw": ("BitDepth", "BitDepth"),  # a depthwise reads through outputs
      "sep_depthwise": ("BitDepth", "BitDepth"),
      "sep_pointwise": ("InputGates", "BitDepth"),
      "fc": ("InputGates", "HardConcreteGate"),
      "out": ("BitDepth", "BitDepth")}
  assert m.get_layer("fc").compressor.min_inputs == 4
  # The logits keep their outputs (min_channels) and may gate inputs.
  m = sc.compress(model, compressor="inputs+gates")
  out = m.get_layer("out").compressor
  assert isinstance(out, InputGates) and out.min_channels == 3
  # Attention's projections are kept whole: they get the inner compressor.
  q = keras.Input((4, 6))
  att = keras.Model(q, L.MultiHeadAttention(2, 3)(q, q))
  m = sc.compress(att, compressor="inputs+bits")
  assert all(type(l.compressor) is compressors.BitDepth
             for l in _compressed(m))


# -- training -----------------------------------------------------------------


def _penalty_reaches_input_gates():
  """Whether the size penalty has a gradient to the input gates (the
  accounting prices `flow.penalty_fan_in`); until it does, only the data
  loss moves them."""
  model = _two_dense()
  c = model.get_layer("d1").compressor
  with tf.GradientTape() as tape:
    penalty = accounting.step_totals(model)[1]
  return tape.gradient(penalty, c.input_log_alpha_param) is not None


def _train_on_framed_digits(epochs):
  """8 x 8 inputs whose border is always 0; the label depends on 8 centre
  pixels, the other 28 centre pixels are noise."""
  if not _penalty_reaches_input_gates():
    pytest.skip("selfcompress.accounting does not use flow.penalty_fan_in")
  rng = np.random.default_rng(0)
  n = 2000
  x = np.zeros((n, 8, 8), "float32")
  x[:, 1:7, 1:7] = rng.normal(size=(n, 6, 6))
  informative = np.zeros((8, 8), bool)
  informative[2:6, 3:5] = True
  w = np.zeros((64, 3))
  w[informative.reshape(-1)] = rng.normal(size=(8, 3)) * 2
  y = (x.reshape(n, -1) @ w).argmax(axis=1)
  model = sc.compress(keras.Sequential([
      keras.Input((8, 8)), L.Flatten(),
      L.Dense(16, activation="relu", name="fc1"), L.Dense(3, name="out")]),
      compressor="inputs+bits", gamma=0.05, input_log_alpha_init=1.0)
  model.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  start = sc.size(model)
  model.fit(x[:1600], y[:1600], epochs=epochs, batch_size=32, verbose=0)
  border = np.ones((8, 8), bool)
  border[1:7, 1:7] = False
  alive = np.asarray(model.get_layer("fc1").compressor.input_state().alive)
  alive = alive.reshape(8, 8) > 0
  acc = model.evaluate(x[1600:], y[1600:], verbose=0, return_dict=True)
  return model, start, alive, border, informative, acc["accuracy"]


def test_training_closes_the_always_zero_border_and_stays_accurate():
  model, start, alive, border, informative, acc = _train_on_framed_digits(5)
  assert not alive[border].any()      # the pixels that are always 0
  assert alive[informative].all()
  end = sc.size(model)
  assert end.layer("fc1").inputs_alive <= 36
  assert end.bits < start.bits / 2
  assert acc > 0.8  # chance is 1/3


@pytest.mark.slow
def test_longer_training_closes_the_noise_pixels_too():
  _, _, alive, border, informative, acc = _train_on_framed_digits(30)
  noise = ~border & ~informative
  assert not alive[border].any() and alive[informative].all()
  assert alive[noise].sum() <= 14     # of 28
  assert acc > 0.95


# -- Keras' layer harness -----------------------------------------------------

# (layer, its arguments, input shape, output shape)
KINDS = [
    (layers.Dense, dict(units=4, activation="relu"), (2, 5), (2, 4)),
    (layers.Dense, dict(units=3), (2, 6, 5), (2, 6, 3)),
    (layers.EinsumDense, dict(equation="abc,cd->abd", output_shape=(3, 4),
                              bias_axes="d"), (2, 3, 5), (2, 3, 4)),
    (layers.Conv2D, dict(filters=4, kernel_size=3), (2, 6, 6, 3),
     (2, 4, 4, 4)),
    (layers.Conv1D, dict(filters=4, kernel_size=3, padding="causal"),
     (2, 7, 3), (2, 7, 4)),
    (layers.Conv2DTranspose, dict(filters=3, kernel_size=3, padding="same"),
     (2, 4, 4, 2), (2, 4, 4, 3)),
]
# Trainable per compressor: the inner one's, plus the input gates'
# log_alpha; seed generators: the inner one's plus the input gates'.
EXTRA = {"inputs+bits": (2, 1), "inputs+gates": (2, 2),
         "inputs+gates+bits": (3, 2)}


class InputGatesHarnessTest(testing.TestCase):

  @parameterized.named_parameters(*[
      dict(testcase_name=f"{cls.__name__}_{i}_{name}", cls=cls, kwargs=kw,
           input_shape=shape, output_shape=out, compressor=name)
      for i, (cls, kw, shape, out) in enumerate(KINDS)
      for name in (EXTRA if i == 0 else ["inputs+bits"])])
  def test_run_layer_test(self, cls, kwargs, input_shape, output_shape,
                          compressor):
    extra_trainable, seeds = EXTRA[compressor]
    use_bias = (bool(kwargs.get("bias_axes")) if cls is layers.EinsumDense
                else kwargs.get("use_bias", True))
    self.run_layer_test(
        cls, init_kwargs=dict(kwargs, compressor=compressor),
        input_shape=input_shape, expected_output_shape=output_shape,
        expected_num_trainable_weights=1 + use_bias + extra_trainable,
        expected_num_seed_generators=seeds, expected_num_losses=0,
        supports_masking=keras_parent(cls)(**kwargs).supports_masking,
        run_training_check=True,
        run_mixed_precision_check=True)


def test_select_channels_layer_passes_the_harness_checks(tmp_path):
  layer = layers.SelectChannels([3, 0, 2], axis=-1)
  x = np.arange(24, dtype="float32").reshape(2, 3, 4)
  np.testing.assert_array_equal(layer(x), x[..., [3, 0, 2]])
  again = layers.SelectChannels.from_config(layer.get_config())
  assert again.indices == [3, 0, 2] and again.axis == -1
  ids = np.arange(8, dtype="int32").reshape(2, 4)
  assert keras.backend.standardize_dtype(layer(ids).dtype) == "int32"
  half = layers.SelectChannels([1], dtype="mixed_float16")
  y = half(x.astype("float16"))
  assert keras.backend.standardize_dtype(y.dtype) == "float16"
  assert math.prod(layer.compute_output_shape((2, 3, 4))) == 18
