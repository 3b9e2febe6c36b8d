"""The entropy-coded storage rule inside the training step: the codes' ideal
length (counted by hand here) and the penalty that follows it."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from selfcompress import accounting, entropy, layers
from selfcompress.compressors import coding


def _table_bits(codes):
  """The stream's header, table and lane states for these codes."""
  codes = np.asarray(codes).reshape(-1)
  lanes = -(-codes.size // entropy.LANE_SYMBOLS)
  return (coding.HEADER_BITS
          + coding.ENTRY_BITS * (codes.max() - codes.min() + 1)
          + 8 * entropy.STATE_BYTES * lanes)


def _ideal_bits(codes):
  """`sum_k n_k * -log2(n_k / N)` plus the table."""
  values, counts = np.unique(np.asarray(codes).reshape(-1), return_counts=True)
  n = counts.sum()
  return float(-(counts * np.log2(counts / n)).sum()) + _table_bits(codes)


def test_ideal_bits_of_known_codes_and_weights():
  codes = np.array([0, 0, 0, 0, 1, -1, 1, 3, 0.2, -0.3], "float32")
  ideal = coding.bits(codes, 1.0)
  assert float(ideal) == pytest.approx(_ideal_bits(np.round(codes)), rel=1e-6)
  # Zero weight: not stored, not counted.
  weight = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], "float32")
  ideal = coding.bits(codes, weight)
  kept = np.round(codes)[weight > 0]
  assert float(ideal) == pytest.approx(_ideal_bits(kept), rel=1e-6)
  # One symbol: only the table.
  assert float(coding.bits(np.zeros(7), 1.0)) == pytest.approx(
      coding.HEADER_BITS + coding.ENTRY_BITS + 8 * entropy.STATE_BYTES)


@pytest.mark.parametrize("n, spread", [(2700, 40.0), (2700, 120.0),
                                       (30000, 60.0), (500, 8.0)])
def test_estimate_follows_the_coder_on_many_distinct_codes(n, spread):
  """Peaked codes with 40-300+ distinct values, as a sparse layer's are:
  the coder then squeezes 8-bit frequencies or takes 16-bit ones; the
  in-step estimate follows within 1.5%."""
  rng = np.random.default_rng(int(spread))
  codes = np.where(rng.random(n) < 0.4, 0,
                   np.round(rng.laplace(0.0, spread, n))).clip(-1000, 1000)
  estimate = float(coding.bits(codes.astype("float32"), 1.0))
  assert estimate == pytest.approx(entropy.coded_bits(codes), rel=0.015)


def _model(storage):
  inp = keras.Input((12,))
  x = layers.Dense(6, activation="relu", name="d1",
                   compressor=sc.compressors.BitDepth(storage=storage))(inp)
  out = layers.Dense(3, name="d2",
                     compressor=sc.compressors.BitDepth(storage=storage))(x)
  model = keras.Model(inp, out)
  model.get_layer("d1").compressor.assign(
      bits=np.array([3, 0, 2.5, -1, 4, 2], "float32"))
  model.get_layer("d2").compressor.assign(bits=np.array([2, 0, 3], "float32"))
  return model


def _codes(layer):
  c = layer.compressor
  codes, _ = c.codes(layer.kernel)
  return np.asarray(codes)


def test_accounting_counts_the_stored_codes_entropy_coded():
  model = _model("entropy")
  terms = accounting.account(model)
  d1, d2 = model.get_layer("d1"), model.get_layer("d2")
  alive1 = np.array([1, 0, 1, 0, 1, 1], bool)
  alive2 = np.array([1, 0, 1], bool)
  # d1 reads every input; its dead channels' codes are not stored.
  expected1 = _ideal_bits(_codes(d1)[:, alive1])
  assert float(terms[d1]["weight_bits"]) == pytest.approx(expected1, rel=1e-5)
  # d2 reads only d1's 4 alive channels: the codes on those inputs.
  expected2 = _ideal_bits(_codes(d2)[alive1][:, alive2])
  assert float(terms[d2]["weight_bits"]) == pytest.approx(expected2, rel=1e-5)
  # The same totals from the step's fast path.
  totals, _ = accounting.step_totals(model)
  assert float(totals["bits"]) == pytest.approx(
      float(accounting.totals(terms)["bits"]), rel=1e-6)


def test_fixed_and_entropy_layers_differ_only_in_weight_bits():
  fixed = accounting.size(_model("fixed"))
  keras.utils.set_random_seed(0)
  entropy_model = _model("entropy")
  entropy_model.set_weights(_model("fixed").get_weights())
  terms = accounting.account(entropy_model)
  for row in fixed.layers:
    t = terms[entropy_model.get_layer(row.name)]
    assert float(t["other_bits"]) == row.other_bits
    assert float(t["weights_alive"]) == row.weights_alive


def test_penalty_trains_every_bit_depth():
  model = sc.compress(keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(8, activation="relu"),
      keras.layers.Dense(4)]), storage="entropy", bits_init=4.0)
  with tf.GradientTape() as tape:
    _, penalty = accounting.step_totals(model)
  grads = tape.gradient(penalty, model.trainable_variables)
  checked = 0
  for v, g in zip(model.trainable_variables, grads):
    if not v.path.endswith("bits_exponent"):
      continue
    assert g is not None, v.path
    assert float(tf.reduce_max(tf.abs(g[:, 0]))) > 0, v.path  # the bits
    checked += 1
  assert checked == 2


def test_fit_with_entropy_storage_shrinks_the_model():
  keras.utils.set_random_seed(1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 16)).astype("float32")
  y = (x[:, 0] > 0).astype("int32")
  model = sc.compress(keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(16, activation="relu"),
      keras.layers.Dense(2)]), storage="entropy", gamma=2.0)
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
      from_logits=True), metrics=["accuracy"])
  before = float(accounting.step_totals(model)[0]["bits"])
  history = model.fit(x, y, epochs=10, batch_size=32, verbose=0)
  after = history.history["size_kb"][-1] * 8000
  assert math.isfinite(after) and after < 0.7 * before
