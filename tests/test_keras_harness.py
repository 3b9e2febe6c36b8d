"""Keras' own layer test harness on every self-compressing layer kind and
compressor: shapes, config and `.keras` round trips, a training step, and
the mixed-precision check (compute in float16, variables in float32)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized
from keras.src import testing

from selfcompress import layers
from selfcompress.layers.base import keras_parent

from capabilities import NO_CHANNELS_FIRST, RUNS_CHANNELS_FIRST

# (layer, its arguments, input shape, output shape)
KINDS = [
    (layers.Dense, dict(units=4, activation="relu"), (2, 5), (2, 4)),
    (layers.EinsumDense, dict(equation="abc,cd->abd", output_shape=(3, 4),
                              bias_axes="d"), (2, 3, 5), (2, 3, 4)),
    (layers.Embedding, dict(input_dim=10, output_dim=4), (2, 3), (2, 3, 4)),
    (layers.Dense, dict(units=3), (2, 6, 5), (2, 6, 3)),
    (layers.Conv1D, dict(filters=4, kernel_size=3, padding="causal"),
     (2, 7, 3), (2, 7, 4)),
    (layers.Conv2D, dict(filters=4, kernel_size=3), (2, 6, 6, 3),
     (2, 4, 4, 4)),
    (layers.Conv2D, dict(filters=4, kernel_size=3,
                         data_format="channels_first"), (2, 3, 6, 6),
     (2, 4, 4, 4)),
    (layers.Conv2D, dict(filters=4, kernel_size=1, groups=2), (2, 5, 5, 4),
     (2, 5, 5, 4)),
    (layers.Conv3D, dict(filters=3, kernel_size=2), (2, 4, 4, 4, 2),
     (2, 3, 3, 3, 3)),
    (layers.Conv1DTranspose, dict(filters=3, kernel_size=3, strides=2),
     (2, 5, 2), (2, 11, 3)),
    (layers.Conv2DTranspose, dict(filters=3, kernel_size=3, padding="same"),
     (2, 4, 4, 2), (2, 4, 4, 3)),
    (layers.Conv3DTranspose, dict(filters=2, kernel_size=2),
     (2, 3, 3, 3, 2), (2, 4, 4, 4, 2)),
    (layers.DepthwiseConv1D, dict(kernel_size=3, depth_multiplier=2),
     (2, 7, 3), (2, 5, 6)),
    (layers.DepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2,
                                  padding="same"), (2, 5, 5, 3), (2, 5, 5, 6)),
]
# Trainable variables: bits -> one holding each channel's bit depth and
# exponent; gates -> log_alpha; gates+bits -> both; sparse_bits -> bits and
# its zero threshold. Non-trainable: the
# gates' seed generator state.
COMPRESSORS = {"bits": (1, 0), "gates": (1, 1), "gates+bits": (2, 1),
               "sparse_bits": (2, 0)}

CASES = [
    dict(testcase_name=f"{cls.__name__}_{i}_{name}", cls=cls, kwargs=kwargs,
         input_shape=shape, output_shape=out, compressor=name)
    for i, (cls, kwargs, shape, out) in enumerate(KINDS)
    for name in COMPRESSORS
]


class KerasLayerHarnessTest(testing.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_run_layer_test(self, cls, kwargs, input_shape, output_shape,
                          compressor):
    if kwargs.get("data_format") == "channels_first" and not RUNS_CHANNELS_FIRST:
      self.skipTest(NO_CHANNELS_FIRST)
    extra_trainable, seeds = COMPRESSORS[compressor]
    use_bias = kwargs.get("use_bias", True) and cls is not layers.Embedding
    if cls is layers.EinsumDense:
      use_bias = bool(kwargs.get("bias_axes"))
    # TensorFlow has no float16 NCHW convolution on a CPU (Keras' own
    # Conv2D fails there the same way), so that one check needs a GPU.
    mixed = not (kwargs.get("data_format") == "channels_first"
                 and not tf.config.list_logical_devices("GPU"))
    self.run_layer_test(
        cls, init_kwargs=dict(kwargs, compressor=compressor),
        input_shape=input_shape, expected_output_shape=output_shape,
        input_dtype="int32" if cls is layers.Embedding else None,
        expected_num_trainable_weights=1 + use_bias + extra_trainable,
        expected_num_seed_generators=seeds,
        expected_num_losses=0,
        supports_masking=keras_parent(cls)(**kwargs).supports_masking,
        run_training_check=True, run_mixed_precision_check=mixed)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_mixed_precision_computes_in_compute_dtype(policy, compressor):
  """Under a mixed policy the layer computes in the compute dtype with
  float32 variables, and its quantized kernel is the float32 one rounded to
  that dtype: it matches the float32 layer as closely as Keras' own layer
  matches its float32 self."""
  x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
  ref = layers.Conv2D(5, 3, compressor=compressor)
  expected = np.asarray(ref(x))
  mixed = layers.Conv2D(5, 3, compressor=compressor, dtype=policy)
  mixed.build(x.shape)
  mixed.set_weights(ref.get_weights())
  y = mixed(x)
  assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
  assert all(keras.backend.standardize_dtype(v.dtype) == "float32"
             for v in mixed.trainable_weights)
  tol = 2e-2 if policy == "mixed_bfloat16" else 2e-3
  np.testing.assert_allclose(np.asarray(y, "float32"), expected,
                             atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_compressed_model_trains_under_mixed_precision(policy):
  """A model built under a mixed policy keeps it through compress(); fit()
  scales the loss (float16) and the size penalty stays float32."""
  import selfcompress as sc
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.DepthwiseConv2D(3), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, dtype="float32")])
    m = sc.compress(model, gamma=10.0)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  conv = next(l for l in m.layers if isinstance(l, layers.CompressedLayer))
  assert conv.dtype_policy.name == policy
  m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  if policy == "mixed_float16":
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
  y = rng.integers(0, 4, 16)
  bits = np.asarray(conv.compressor.raw_bits())
  logs = m.fit(x, y, epochs=2, batch_size=8, verbose=0).history
  assert np.all(np.isfinite(logs["loss"]))
  # The penalty's gradient reached the (float32) bit depths.
  assert np.all(np.asarray(conv.compressor.raw_bits()) < bits)
  assert all(keras.backend.standardize_dtype(v.dtype) == "float32"
             for v in m.trainable_weights)


class AttentionHarnessTest(testing.TestCase):

  @parameterized.named_parameters(
      *[dict(testcase_name=name, compressor=name) for name in COMPRESSORS])
  def test_multi_head_attention(self, compressor):
    extra_trainable, seeds = COMPRESSORS[compressor]
    self.run_layer_test(
        layers.MultiHeadAttention,
        init_kwargs=dict(num_heads=2, key_dim=3, compressor=compressor),
        input_shape={"query_shape": (2, 4, 6), "value_shape": (2, 5, 6)},
        expected_output_shape=(2, 4, 6),
        # query, key, value and output projections: kernel, bias and the
        # compressor's per-feature parameters each.
        expected_num_trainable_weights=4 * (2 + extra_trainable),
        expected_num_seed_generators=4 * seeds,
        expected_num_losses=0, supports_masking=True,
        # As in Keras' own MultiHeadAttention test: the harness's training
        # check feeds one input; test_any_model trains attention in a model.
        run_training_check=False, run_mixed_precision_check=True)
