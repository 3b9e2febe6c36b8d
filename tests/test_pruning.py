"""Masks in Keras variables, pruning strategies and sparse sizes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from selfcompress import pruning
from selfcompress.pruning import size as size_lib


def small_model():
  return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                           keras.layers.Dense(3)])


def test_mask_validates_and_reports_sparsity(tmp_path):
  with pytest.raises(ValueError, match="0 or 1"):
    pruning.Mask({"a/kernel": np.array([0.0, 0.5, 1.0])})
  with pytest.raises(ValueError, match="at least one"):
    pruning.Mask({})
  mask = pruning.Mask({"a/kernel": np.array([[1, 0], [0, 0]]),
                       "b/kernel": np.ones(4)})
  assert (mask.num_remaining, mask.num_total) == (5, 8)
  assert mask.sparsity == pytest.approx(3 / 8)
  assert mask.per_layer() == {"a/kernel": (1, 4), "b/kernel": (4, 4)}
  mask.save(str(tmp_path / "m.npz"))
  assert pruning.Mask.load(str(tmp_path / "m.npz")) == mask
  with pytest.raises(ValueError, match="does not fit"):
    mask.check_shapes([(2, 2), (5,)])


# Hand-made: kernel a holds 3 of the 4 globally smallest magnitudes and the
# largest one.
WEIGHTS = {"a": np.array([[0.1, -0.2], [0.3, -0.9]]),
           "b": np.array([[0.5, -0.6], [0.7, 0.8]])}


def test_layerwise_prunes_the_smallest_of_each_layer():
  mask = pruning.Mask.ones({p: w.shape for p, w in WEIGHTS.items()})
  out = pruning.get("layerwise_magnitude")(
      WEIGHTS, mask, {"a": 0.5, "b": 0.5})
  np.testing.assert_array_equal(out["a"], [[0, 0], [1, 1]])
  np.testing.assert_array_equal(out["b"], [[0, 0], [1, 1]])


def test_global_prunes_the_smallest_overall():
  mask = pruning.Mask.ones({p: w.shape for p, w in WEIGHTS.items()})
  out = pruning.get("global_magnitude")(WEIGHTS, mask, {"a": 0.5, "b": 0.5})
  np.testing.assert_array_equal(out["a"], [[0, 0], [0, 1]])  # 0.1-0.3
  np.testing.assert_array_equal(out["b"], [[0, 1], [1, 1]])  # 0.5
  # Half of the 4 left: 0.6 and 0.7, never the already-pruned ones.
  again = pruning.get("global_magnitude")(WEIGHTS, out, {"a": 0.5, "b": 0.5})
  np.testing.assert_array_equal(again["a"], [[0, 0], [0, 1]])
  np.testing.assert_array_equal(again["b"], [[0, 0], [0, 1]])


def test_output_layer_prunes_at_its_rate_and_random_matches_counts():
  fractions = pruning.layer_fractions(["x", "y", "out"], 0.2, 0.5)
  assert fractions == {"x": 0.2, "y": 0.2, "out": pytest.approx(0.1)}
  with pytest.raises(ValueError, match="one value per prunable kernel"):
    pruning.layer_fractions(["x", "y"], 0.2, per_layer=(0.1,))
  rng = np.random.default_rng(0)
  weights = {"x": rng.normal(size=(40, 30)), "out": rng.normal(size=(30, 10))}
  mask = pruning.Mask.ones({p: w.shape for p, w in weights.items()})
  fractions = pruning.layer_fractions(weights, 0.2, 0.5)
  magnitude = pruning.get("layerwise_magnitude")(weights, mask, fractions)
  random = pruning.get("random")(weights, mask, fractions,
                                 np.random.default_rng(1))
  assert magnitude.per_layer() == {"x": (960, 1200), "out": (270, 300)}
  assert random.per_layer() == magnitude.per_layer()
  assert not random == magnitude
  with pytest.raises(ValueError, match="Unknown pruning strategy"):
    pruning.get("l1_unstructured")


@pytest.mark.parametrize("jit", [False, True])
def test_pruned_weights_stay_exactly_zero_through_fit(jit):
  model = pruning.attach(small_model())
  rng = np.random.default_rng(0)
  mask = pruning.Mask({p: rng.random(s) < 0.5
                       for p, s in pruning.kernel_shapes(model).items()})
  pruning.apply(model, mask)
  before = pruning.kernels(model)
  model.compile(keras.optimizers.Adam(0.1), "mse", jit_compile=jit)
  x, y = rng.normal(size=(64, 6)), rng.normal(size=(64, 3))
  model.fit(x, y, epochs=3, batch_size=8, verbose=0)
  after = pruning.kernels(model)
  for path, keep in mask.items():
    assert np.all(after[path][keep == 0] == 0.0), path
    assert np.all(after[path][keep == 1] != before[path][keep == 1]), path
  assert pruning.mask_of(model) == mask
  # The masks are model variables: they are among the saved weights.
  assert sum(v.path.endswith("kernel_mask") for v in model.weights) == 2


def test_masks_under_tf_distribute():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = pruning.attach(small_model())
    mask = pruning.Mask({p: np.arange(np.prod(s)).reshape(s) % 2
                         for p, s in pruning.kernel_shapes(model).items()})
    pruning.apply(model, mask)
    model.compile(keras.optimizers.Adam(0.1), "mse")
  rng = np.random.default_rng(0)
  model.fit(rng.normal(size=(32, 6)), rng.normal(size=(32, 3)), epochs=2,
            batch_size=8, verbose=0)
  for path, kernel in pruning.kernels(model).items():
    assert np.all(kernel[mask[path] == 0] == 0.0)


def test_apply_needs_attach_and_matching_shapes():
  model = small_model()
  mask = pruning.Mask.ones({"k1": (6, 5), "k2": (5, 3)})
  with pytest.raises(ValueError, match="attach"):
    pruning.apply(model, mask)
  pruning.attach(model)
  with pytest.raises(ValueError, match="does not fit"):
    pruning.apply(model, pruning.Mask.ones({"k1": (6, 5)}))


def test_relative_index_size_by_hand():
  # Kept at 0 and 7: gaps 1 and 7. 3-bit gaps need no filler: 2 x (32 + 3).
  keep = np.array([1, 0, 0, 0, 0, 0, 0, 1])
  assert size_lib.relative_index_bits(keep, 32) == (64, 6)
  # With 2-bit gaps a filler would be needed; dense storage wins when full.
  assert size_lib.relative_index_bits(np.ones(8), 32) == (256, 0)


def test_sparse_size_and_uniform_quantization():
  model = pruning.attach(small_model())
  shapes = pruning.kernel_shapes(model)
  pruning.apply(model, pruning.Mask({p: np.eye(*s) for p, s in shapes.items()}))
  dense = size_lib.sparse_size(model)
  assert dense.weights_kept == 8 and dense.weights_total == 45
  assert dense.float_bits == 32 * (45 + 8)  # kernels + biases
  assert dense.bits < dense.float_bits
  pruning.quantize_uniform(model, 3)
  for path, kernel in pruning.kernels(model).items():
    scale = np.abs(kernel).max() / 3
    np.testing.assert_allclose(kernel / scale, np.round(kernel / scale),
                               atol=1e-5)
    assert np.all(kernel[np.eye(*shapes[path]) == 0] == 0)
  small = size_lib.sparse_size(model, value_bits=3)
  assert small.values == 8 * 3 * dense.values // (8 * 32)
  with pytest.raises(ValueError, match="bits"):
    pruning.quantize_uniform(model, 1)
