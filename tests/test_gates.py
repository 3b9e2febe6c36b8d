"""Hard-concrete L0 gates: sampling, test-time gate, penalty, accounting,
holding, compress() selection and a short training run."""

import keras
import numpy as np
import pytest

import selfcompress as sc
from selfcompress import compressors, layers
from selfcompress.compressors import gates

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
  return np.log(p) - np.log1p(-p)


def _survival(log_alpha, t):
  """P(z > t) for 0 <= t < 1, from the concrete distribution's CDF."""
  return _sigmoid(log_alpha - BETA * _logit((t - GAMMA) / (ZETA - GAMMA)))


def _expected_z(log_alpha):
  """E[z] = integral over [0, 1] of P(z > t) dt (z is in [0, 1])."""
  t = np.linspace(0.0, 1.0, 200_001)
  return np.trapezoid(_survival(log_alpha, t), t)


def _dense(units, compressor, fan_in=1, **kw):
  layer = layers.Dense(units, compressor=compressor, **kw)
  layer.build((None, fan_in))
  layer.kernel_variable.assign(np.ones((fan_in, units), "float32"))
  return layer


def _gate_values(layer, training):
  """Each channel's gate: the effective kernel of an all-ones kernel."""
  kernel, _ = layer.compressor.apply(layer.kernel_variable, None, training)
  return np.asarray(kernel)[0]


@pytest.mark.parametrize("log_alpha", [-1.5, 0.0, 0.8, 2.5])
def test_sampled_gates_match_their_closed_form_distribution(log_alpha):
  u = np.random.default_rng(0).uniform(1e-6, 1 - 1e-6, 400_000)
  z = np.asarray(gates.sample(np.float32(log_alpha), u.astype("float32")))
  assert z.min() >= 0.0 and z.max() <= 1.0
  # The standard error of each estimate is below 1e-3.
  assert z.mean() == pytest.approx(_expected_z(log_alpha), abs=4e-3)
  assert np.mean(z == 0) == pytest.approx(
      1 - _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA)), abs=4e-3)
  assert np.mean(z == 1) == pytest.approx(_survival(log_alpha, 1 - 1e-9),
                                          abs=4e-3)


@pytest.mark.parametrize("name", ["gates", "gates+bits"])
def test_layer_draws_fresh_gates_in_training_with_the_right_mean(name):
  layer = _dense(1000, name)
  c = layer.compressor
  c.assign_log_alpha(0.5)
  if name == "gates+bits":  # 1.0 is on the grid: the kernel is the gate
    c.assign(bits=8.0, exponent=-6.0)
  draws = np.stack([_gate_values(layer, True) for _ in range(40)])
  assert not np.array_equal(draws[0], draws[1])
  assert draws.mean() == pytest.approx(_expected_z(0.5), abs=0.01)


@pytest.mark.parametrize("name", ["gates", "gates+bits"])
def test_test_time_gate_is_deterministic_and_closed_form(name):
  layer = _dense(9, name, fan_in=3)
  c = layer.compressor
  log_alpha = np.linspace(-4.0, 4.0, 9).astype("float32")
  c.assign_log_alpha(log_alpha)
  expected = np.clip(_sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)
  if name == "gates+bits":
    c.assign(bits=8.0, exponent=-6.0)
  np.testing.assert_allclose(_gate_values(layer, False), expected, rtol=1e-6)
  x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
  y = np.asarray(layer(x))
  np.testing.assert_array_equal(layer(x), y)
  np.testing.assert_array_equal(layer(x, training=False), y)
  # Closed gates (log_alpha <= -log 11) are dead; the others alive.
  alive = (log_alpha > gates.DEAD_LOG_ALPHA).astype("float32")
  np.testing.assert_array_equal(c.alive(), alive)
  np.testing.assert_array_equal(y[:, alive == 0], 0.0)


def test_penalty_equals_the_expected_l0_norm_times_bits():
  log_alpha = np.array([3.0, 0.0, -1.0, -6.0], "float32")
  p_nonzero = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
  gate = _dense(4, "gates")
  gate.compressor.assign_log_alpha(log_alpha)
  state = gate.compressor.state()
  np.testing.assert_allclose(state.penalty_bits, 32 * p_nonzero, rtol=1e-5)
  np.testing.assert_array_equal(state.storage_bits, [32, 32, 32, 0])

  both = _dense(4, "gates+bits")
  both.compressor.assign_log_alpha(log_alpha)
  both.compressor.assign(bits=[5.5, -1.0, 2.2, 7.0])
  state = both.compressor.state()
  np.testing.assert_allclose(state.penalty_bits,
                             p_nonzero * np.array([5.5, 0, 2.2, 7.0]),
                             rtol=1e-5)
  # Dead by its bits (channel 1) or by its gate (channel 3).
  np.testing.assert_array_equal(state.alive, [1, 0, 1, 0])
  np.testing.assert_array_equal(state.storage_bits, [6, 0, 3, 0])


def test_accounting_counts_gated_off_channels_as_dead_downstream():
  model = sc.compress(keras.Sequential([
      keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
      keras.layers.Dense(3)]), compressor="gates")
  hidden, logits = [l for l in model.layers
                    if isinstance(l, layers.CompressedLayer)]
  log_alpha = np.array([3.0, 0.0, -1.0, -6.0], "float32")
  hidden.compressor.assign_log_alpha(log_alpha)
  report = sc.size(model)
  # 3 alive hidden units read 5 inputs; the logits read the 3 alive units.
  assert report.layer(hidden.name).weight_bits == 32 * 3 * 5
  assert report.layer(logits.name).weight_bits == 32 * 3 * 3
  assert report.bits == 32 * (3 * 5 + 3) + 32 * (3 * 3 + 3)
  p_nonzero = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
  # The logits are protected, hence ungated: P(z != 0) = 1.
  expected = (32 * 5 * p_nonzero.sum() + 32 * 3 * 3) / (5 * 4 + 4 * 3)
  q = sc.accounting.size_penalty(sc.accounting.account(model))
  assert float(q) == pytest.approx(expected, rel=1e-5)


def test_min_channels_holds_the_strongest_gate_open():
  layer = _dense(4, "gates", fan_in=2, min_channels=1)
  c = layer.compressor
  c.assign_log_alpha([-5.0, -3.0, -4.0, -6.0])
  np.testing.assert_array_equal(c.alive(), [0, 1, 0, 0])
  np.testing.assert_array_equal(c.held_channels(), [0, 1, 0, 0])
  np.testing.assert_array_equal(_gate_values(layer, True)[1], 1.0)
  assert float(c.state().penalty_bits[1]) == 32.0
  # A layer that must keep every channel is not gated at all.
  logits = _dense(4, "gates", fan_in=2, min_channels=4)
  logits.compressor.assign_log_alpha([-5.0, 0.0, 1.0, 9.0])
  for training in (True, False):
    np.testing.assert_array_equal(_gate_values(logits, training), 1.0)
  np.testing.assert_array_equal(logits.compressor.held_channels(), 0.0)


def test_gates_and_bits_hold_a_channel_alive_with_held_bits():
  layer = _dense(3, "gates+bits", fan_in=2, min_channels=1)
  c = layer.compressor
  c.assign_log_alpha([1.0, 2.0, -5.0])
  c.assign(bits=[-1.0, -2.0, 4.0])  # 0, 1 dead by bits; 2 by its gate
  np.testing.assert_array_equal(c.alive(), [0, 1, 0])
  np.testing.assert_array_equal(c.state().storage_bits, [0, 2, 0])


def test_serialized_compressors_round_trip():
  for c in (compressors.HardConcreteGate(log_alpha_init=1.0, seed=3),
            compressors.GatedBitDepth(bits_init=6, gate_lr_multiplier=5.0)):
    again = compressors.get(compressors.serialize(c))
    assert type(again) is type(c) and again.get_config() == c.get_config()


def test_wrong_arguments_for_a_compressor_are_named():
  with pytest.raises(TypeError, match="HardConcreteGate.*bits_init"):
    compressors.get("gates", bits_init=8)
  with pytest.raises(ValueError, match="gate_lr_multiplier"):
    compressors.HardConcreteGate(gate_lr_multiplier=0)
  with pytest.raises(ValueError, match="log_alpha_init"):
    compressors.GatedBitDepth(log_alpha_init=float("inf"))


def _mlp():
  return keras.Sequential([
      keras.Input((12,)), keras.layers.Dense(32, activation="relu", name="a"),
      keras.layers.Dense(16, activation="relu", name="b"),
      keras.layers.Dense(3, name="out")])


def test_compress_picks_the_compressor_per_layer():
  by_name = sc.compress(_mlp(), compressor="gates",
                        per_layer={"b": "gates+bits", "out": "bits"})
  kinds = {l.name: type(l.compressor).__name__ for l in by_name.layers
           if isinstance(l, layers.CompressedLayer)}
  assert kinds == {"a": "HardConcreteGate", "b": "GatedBitDepth",
                   "out": "BitDepth"}
  by_function = sc.compress(
      _mlp(), per_layer=lambda l: "gates" if l.name == "a" else "bits")
  kinds = {l.name: type(l.compressor).__name__ for l in by_function.layers
           if isinstance(l, layers.CompressedLayer)}
  assert kinds == {"a": "HardConcreteGate", "b": "BitDepth", "out": "BitDepth"}
  with pytest.raises(TypeError, match="per_layer"):
    sc.compress(_mlp(), per_layer=["a"])


def test_gates_feeding_batchnorm_are_warned_about():
  model = keras.Sequential([
      keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv"),
      keras.layers.BatchNormalization(), keras.layers.Flatten(),
      keras.layers.Dense(2)])
  with pytest.warns(UserWarning, match="conv.*BatchNormalization"):
    sc.compress(model, compressor="gates")


@pytest.mark.parametrize("name", ["gates", "gates+bits"])
def test_training_with_gates_closes_channels_and_stays_accurate(name):
  rng = np.random.default_rng(0)
  centers = rng.normal(scale=2.5, size=(3, 12))
  y = rng.integers(0, 3, 2000)
  x = (centers[y] + rng.normal(size=(2000, 12))).astype("float32")
  # Gates start half-open so that a few steps can close them.
  model = sc.compress(_mlp(), compressor=name, gamma=0.1, log_alpha_init=0.5)
  model.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  start = sc.size(model)
  model.fit(x[:1500], y[:1500], epochs=4, batch_size=50, verbose=0)
  end = sc.size(model)
  assert end.layer("a").channels_alive < 32
  assert end.bits * 2 <= start.bits, (start.kb, end.kb)
  acc = model.evaluate(x[1500:], y[1500:], verbose=0, return_dict=True)
  assert acc["accuracy"] > 0.9  # chance is 1/3
