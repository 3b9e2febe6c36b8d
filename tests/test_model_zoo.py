"""The model zoo: real architectures go through compress, fit, shed and export.

Every model is small and randomly initialised. Each one is compressed, trained
for a few steps, given varied BatchNorm/LayerNorm parameters (so dead channels
carry constants that shedding must fold), has about half the channels of every
compressed layer killed (nested models included), has its BatchNorm
statistics calibrated on a batch (so the outputs depend on the input), and
then:

* `shed()` gives a smaller model that computes the same outputs, and whose
  size by the one accounting is the compressed model's;
* `export()` writes a SavedModel that TensorFlow alone serves with the same
  outputs (token models keep their int32 input).

The keras.applications models train eagerly in the default tier: tracing
their train step takes ~30 s on 2 cores. The traced step is exercised on the
hand-built models (nested models, op nodes, depthwise, BatchNorm, Add) and on
MobileNetV2 in the slow tier.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from capabilities import CHANNELS_FIRST

L = keras.layers
A = keras.applications

CLASSES = 5
SEQ, VOCAB = 16, 50
slow = pytest.mark.slow  # excluded by default (pyproject.toml); `-m slow` runs it

# Layers that compress() must reach wherever they are.
WEIGHTED = (L.Dense, L.Conv1D, L.Conv2D, L.DepthwiseConv2D)


@dataclasses.dataclass
class Zoo:
  """A model to run through the pipeline, and what to expect of it."""
  model: keras.Model
  inputs: Callable  # (rng, n) -> a batch of n inputs
  kinds: tuple  # compressed kinds that must have channels killed
  nested: int = 0  # at least this many models nested in `model`
  eager_fit: bool = False
  tol: float = 1e-5  # relative, and absolute times the largest |output|


# The deep keras.applications nets (50+ BatchNorm layers, random weights,
# calibrated statistics) amplify float32 rounding about a hundredfold: the
# same compressed model under XLA differs from its eager run by 1.5e-5 to
# 2e-5 of its largest output (MobileNetV2, EfficientNetB0, ResNet50), and an
# input changed by 1e-7 (relative) moves the outputs by 1e-5 to 3e-5. Shed
# models, whose sums run in another order and fold dead constants into
# biases, have been measured at up to 1.2e-4. 1e-5 cannot hold there. A
# structural error is far larger: dropping one dead channel's constant
# instead of folding it moved MobileNetV2's outputs by at least 7.5e-3 of
# their largest in each of the 26 cases where it mattered (median 0.4).
DEEP_TOL = 5e-4


def _normal(shape):
  return lambda rng, n: rng.normal(size=(n,) + shape).astype("float32")


def _pixels(shape):  # models whose first layers rescale 0..255 pixels
  return lambda rng, n: rng.uniform(0, 255, size=(n,) + shape).astype("float32")


def _tokens(rng, n):
  return rng.integers(0, VOCAB, size=(n, SEQ)).astype("int32")


# -- keras.applications (all accept 32x32 inputs with weights=None) ---------

def mobilenet_v2(eager_fit=True):
  return Zoo(A.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                           classes=CLASSES, classifier_activation=None),
             _normal((32, 32, 3)), kinds=("Conv2D", "DepthwiseConv2D"),
             eager_fit=eager_fit, tol=DEEP_TOL)


def mobilenet_v2_traced():
  return mobilenet_v2(eager_fit=False)


def efficientnet_b0():
  # Rescaling + Normalization in front, squeeze-and-excite blocks (Reshape,
  # Multiply), Dropout and drop-connect (Dropout with a noise_shape).
  return Zoo(A.EfficientNetB0(input_shape=(32, 32, 3), weights=None,
                              classes=CLASSES, classifier_activation=None),
             _pixels((32, 32, 3)), kinds=("Conv2D", "DepthwiseConv2D"),
             eager_fit=True, tol=DEEP_TOL)


def densenet121():
  return Zoo(A.DenseNet121(input_shape=(32, 32, 3), weights=None,
                           classes=CLASSES, classifier_activation=None),
             _normal((32, 32, 3)), kinds=("Conv2D",), eager_fit=True,
             tol=DEEP_TOL)


def convnext_tiny():
  # Nested Sequentials (stem, downsampling), grouped 7x7 convolutions,
  # LayerNormalization, the LayerScale custom layer, residual op nodes
  # (`inputs + x`).
  return Zoo(A.ConvNeXtTiny(input_shape=(32, 32, 3), weights=None,
                            classes=CLASSES, classifier_activation=None),
             _pixels((32, 32, 3)), kinds=("Conv2D", "Dense"), nested=4,
             eager_fit=True, tol=DEEP_TOL)


def resnet50():
  return Zoo(A.ResNet50(input_shape=(32, 32, 3), weights=None,
                        classes=CLASSES, classifier_activation=None),
             _normal((32, 32, 3)), kinds=("Conv2D",), eager_fit=True,
             tol=DEEP_TOL)


def mobilenet_v2_backbone():
  """Transfer learning: a keras.applications backbone as one layer."""
  backbone = A.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                           include_top=False, weights=None, name="backbone")
  inp = keras.Input((32, 32, 3))
  x = L.GlobalAveragePooling2D()(backbone(inp))
  x = L.Dense(16, activation="relu")(x)
  return Zoo(keras.Model(inp, L.Dense(CLASSES)(x)), _normal((32, 32, 3)),
             kinds=("Conv2D", "DepthwiseConv2D", "Dense"), nested=1,
             eager_fit=True, tol=DEEP_TOL)


# -- hand-built ---------------------------------------------------------------

def small_resnet():
  inp = keras.Input((16, 16, 3))
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
  for filters, stride in ((8, 1), (16, 2)):
    y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(y))
    shortcut = x
    if stride != 1:
      shortcut = L.BatchNormalization()(
          L.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
    x = L.ReLU()(L.Add()([shortcut, y]))
  x = L.GlobalAveragePooling2D()(x)
  return Zoo(keras.Model(inp, L.Dense(CLASSES)(x)), _normal((16, 16, 3)),
             kinds=("Conv2D",))


def nested_sequential():
  """A Sequential block in the middle of a Functional model, and the logits
  inside a nested Sequential head."""
  block = keras.Sequential([
      keras.Input((16, 16, 8)), L.Conv2D(12, 3, padding="same", use_bias=False),
      L.BatchNormalization(), L.ReLU(), L.Conv2D(8, 1),
      L.BatchNormalization()], name="block")
  head = keras.Sequential([
      keras.Input((8 * 8 * 8,)), L.Dense(16, activation="relu"),
      L.Dense(CLASSES)], name="head")
  inp = keras.Input((16, 16, 3))
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
  x = L.ReLU()(L.Add()([x, block(x)]))
  x = L.Flatten()(L.MaxPooling2D()(x))
  return Zoo(keras.Model(inp, head(x)), _normal((16, 16, 3)),
             kinds=("Conv2D", "Dense"), nested=2)


def transformer():
  """An encoder block on int32 token ids; the positions, the positional add
  and both residuals are op nodes (keras.ops / Python `+` on KerasTensors)."""
  ids = keras.Input((SEQ,), dtype="int32")
  positions = keras.ops.cumsum(keras.ops.ones_like(ids), axis=1) - 1
  x = L.Embedding(VOCAB, 32)(ids) + L.Embedding(SEQ, 32)(positions)
  attn = L.MultiHeadAttention(num_heads=2, key_dim=16)(x, x)
  x = L.LayerNormalization()(x + attn)
  h = L.Dense(64, activation="relu")(x)
  x = L.LayerNormalization()(x + L.Dense(32)(h))
  x = L.GlobalAveragePooling1D()(x)
  return Zoo(keras.Model(ids, L.Dense(CLASSES)(x)), _tokens, kinds=("Dense",))


def _recurrent(rnn):
  ids = keras.Input((SEQ,), dtype="int32")
  x = L.Embedding(VOCAB, 16)(ids)
  x = L.Bidirectional(rnn(8, return_sequences=True))(x)
  x = L.Dense(16, activation="relu")(x)
  x = L.GlobalAveragePooling1D()(x)
  return Zoo(keras.Model(ids, L.Dense(CLASSES)(x)), _tokens, kinds=("Dense",))


def bidirectional_lstm():
  return _recurrent(L.LSTM)


def bidirectional_gru():
  return _recurrent(L.GRU)


def channels_first():
  cf = "channels_first"
  model = keras.Sequential([
      keras.Input((3, 16, 16)), L.Conv2D(8, 3, data_format=cf),
      L.BatchNormalization(axis=1), L.ReLU(), L.MaxPooling2D(data_format=cf),
      L.Conv2D(8, 3, padding="same", data_format=cf),
      L.BatchNormalization(axis=1), L.ReLU(), L.Flatten(),
      L.Dense(16, activation="relu"), L.Dense(CLASSES)])
  return Zoo(model, _normal((3, 16, 16)), kinds=("Conv2D", "Dense"))


@keras.saving.register_keras_serializable(package="zoo_test")
class ChannelScale(L.Layer):
  """A custom layer with weights: a learned scale per channel."""

  def __init__(self, low=0.5, high=1.5, **kwargs):
    super().__init__(**kwargs)
    self.low, self.high = low, high

  def build(self, input_shape):
    self.scale = self.add_weight(
        name="scale", shape=(input_shape[-1],),
        initializer=keras.initializers.RandomUniform(self.low, self.high))

  def call(self, x):
    return x * self.scale

  def get_config(self):
    return {**super().get_config(), "low": self.low, "high": self.high}


def custom_layer():
  inp = keras.Input((16, 16, 3))
  x = L.Conv2D(8, 3, activation="relu")(inp)
  x = ChannelScale()(x)
  x = L.Conv2D(12, 3, activation="relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  x = ChannelScale()(L.Dense(16, activation="relu")(x))
  return Zoo(keras.Model(inp, L.Dense(CLASSES)(x)), _normal((16, 16, 3)),
             kinds=("Conv2D", "Dense"))


# Default tier: the MobileNetV2 backbone covers what the plain MobileNetV2
# does, nested (residual adds included); the LSTM what the GRU does;
# tests/test_any_model.py's attention model what the transformer does.
ZOO = [
    pytest.param(small_resnet, "gates+bits", marks=slow),
    pytest.param(nested_sequential, "bits"),
    pytest.param(transformer, "bits", marks=slow),
    pytest.param(bidirectional_lstm, "bits"),
    pytest.param(channels_first, "bits", marks=CHANNELS_FIRST),
    pytest.param(custom_layer, "bits"),
    pytest.param(mobilenet_v2_backbone, "bits"),
    pytest.param(small_resnet, "bits", marks=slow),
    pytest.param(bidirectional_gru, "bits", marks=slow),
    pytest.param(transformer, "gates+bits", marks=slow),
    pytest.param(mobilenet_v2, "bits", marks=slow),
    pytest.param(mobilenet_v2_traced, "bits", marks=slow),
    pytest.param(mobilenet_v2_backbone, "gates+bits", marks=slow),
    pytest.param(efficientnet_b0, "bits", marks=slow),
    pytest.param(resnet50, "bits", marks=slow),
    pytest.param(convnext_tiny, "bits", marks=slow),
    pytest.param(densenet121, "bits", marks=slow),
]


# -- the pipeline ---------------------------------------------------------------

def _all_layers(model):
  return list(model._flatten_layers(include_self=False))  # nested ones too


def _kind(layer):
  """The Keras class a compressed layer extends: "Conv2D", "Dense", ..."""
  return next(c.__name__ for c in type(layer).__mro__
              if c.__module__.startswith("keras."))


def _nested_weighted(model):
  """name of every model nested in `model` (at any depth) -> the names of
  the Dense/Conv layers inside it."""
  return {sub.name: {l.name for l in _all_layers(sub)
                     if isinstance(l, WEIGHTED)}
          for sub in _all_layers(model) if isinstance(sub, keras.Model)}


def _fit(model, zoo, rng):
  """Two steps of plain compile() and fit(), with the size penalty."""
  x, y = zoo.inputs(rng, 16), rng.integers(0, CLASSES, 16)
  model.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                run_eagerly=zoo.eager_fit)
  history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
  assert np.isfinite(history["loss"]).all(), history
  assert np.isfinite(history["size_kb"]).all(), history


def _randomize(model, rng):
  """Varied normalisation parameters: a dead channel then carries a non-zero
  constant (which shedding folds or keeps), and ConvNeXt's blocks (LayerScale
  starts at 1e-6) contribute to the output."""
  for layer in _all_layers(model):
    if isinstance(layer, (L.BatchNormalization, L.LayerNormalization)):
      if layer.gamma is not None:
        n = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
      if layer.beta is not None:
        n = layer.beta.shape[0]
        layer.beta.assign(rng.normal(scale=0.5, size=n).astype("float32"))
    elif type(layer).__name__ == "LayerScale":
      layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape)
                         .astype("float32"))


def _kill(model, rng):
  """Kills half the channels (rounded down) of every compressed layer,
  nested ones included, short of its `min_channels`: by the bit depth, or
  (gates and bits) by either. Open gates get varied values in (0, 1], which
  scale their channels (and break the ties between trained log_alphas that
  `min_channels` would otherwise hold open together). Returns {layer:
  channels dead}."""
  killed = {}
  for layer in _all_layers(model):
    if not isinstance(layer, sc.layers.CompressedLayer):
      continue
    c = layer.compressor
    n = c.num_channels
    k = max(0, min(n // 2, n - c.min_channels))
    dead = np.zeros(n, bool)
    dead[rng.permutation(n)[:k]] = True
    has_bits, has_gate = hasattr(c, "assign"), hasattr(c, "assign_log_alpha")
    if has_bits and has_gate:  # half of them by the gate
      by_gate = dead & (rng.random(n) < 0.5)
    else:
      by_gate = dead if has_gate else np.zeros(n, bool)
    if has_bits:
      bits = np.asarray(c.raw_bits())
      c.assign(bits=np.where(dead & ~by_gate, -1.0, bits))
    if has_gate:
      c.assign_log_alpha(np.where(by_gate, -6.0, rng.uniform(-2.0, 3.0, n)))
    # By the layer's own liveness. `min_channels` may hold a killed channel
    # alive (gates+bits holds the strongest gate's, even with others alive).
    alive = int(np.asarray(c.alive()).sum())
    assert n - k <= alive <= n - k + c.min_channels, (layer.name, alive, n, k)
    killed[layer] = n - alive
  return killed


def _calibrate(model, x):
  """BatchNorm statistics of this batch, each layer's given the ones before
  it: one pass with momentum 0 (a random deep net with default statistics
  computes a near-constant). Only BatchNorm runs in training mode: the rest
  computes what it does at inference. A training-mode pass samples the
  gates, so BatchNorm would normalise channels that inference scales by
  other gates: gates+bits MobileNetV2's outputs then moved by 2e-3 of
  their largest for inputs changed by 1e-7 (relative), and float32
  rounding alone put the shed model 6e-2 away (1e-5 and 6e-5 calibrated
  at the inference gates)."""
  bns = [l for l in _all_layers(model) if isinstance(l, L.BatchNormalization)]
  if not bns:
    return
  momenta = [b.momentum for b in bns]
  for b in bns:
    b.momentum = 0.0

  def call(node, op, ins, args, kwargs):
    if getattr(op, "_call_has_training_arg", False):
      kwargs = dict(kwargs, training=isinstance(op, L.BatchNormalization))
    return op(*args, **kwargs)

  try:
    sc.surgery.walk(model, [x], call)
  finally:
    for b, momentum in zip(bns, momenta):
      b.momentum = momentum


def _assert_depends_on_input(out):
  spread = out.std(axis=0).mean()  # across the batch, per output
  assert spread > 1e-2 * np.abs(out).max(), (
      f"outputs barely depend on the input (spread {spread:.3g}, max "
      f"{np.abs(out).max():.3g}): the comparisons below would prove little")


def _assert_close(actual, expected, tol, what):
  np.testing.assert_allclose(actual, expected, rtol=tol,
                             atol=tol * np.abs(expected).max(), err_msg=what)


def _size_diff(shed, model):
  """The layers whose size differs between two size reports (the message of
  a failed comparison)."""
  def row(l):
    if l is None:
      return "absent"
    fields = ("bits", "channels_alive", "channels_total", "inputs_alive")
    return " ".join(f"{f}={getattr(l, f, '?')}" for f in fields)
  before = {getattr(l, "name", i): l for i, l in enumerate(model.layers)}
  after = {getattr(l, "name", i): l for i, l in enumerate(shed.layers)}
  lines = [f"size of the shed model {shed.bits} bits, of the model "
           f"{model.bits} bits; the layers that differ (shed | model):"]
  for name in list(after) + [n for n in before if n not in after]:
    a, b = after.get(name), before.get(name)
    if a is None or b is None or a.bits != b.bits:
      lines.append(f"  {name}: {row(a)} | {row(b)}")
  return "\n".join(lines[:40])


def _serve(path, x):
  """The served outputs on `x`, with TensorFlow alone; the input keeps its
  dtype (int32 token ids)."""
  fn = tf.saved_model.load(str(path)).signatures["serving_default"]
  specs = fn.structured_input_signature[1]
  assert len(specs) == 1, specs
  ((name, spec),) = specs.items()
  assert spec.dtype == tf.as_dtype(x.dtype), spec
  outputs = fn(**{name: tf.constant(x)})
  assert list(outputs) == ["output"], list(outputs)
  return outputs["output"].numpy()


@pytest.mark.parametrize("build, compressor", ZOO)
def test_compress_fit_shed_export(build, compressor, tmp_path):
  rng = np.random.default_rng(0)
  zoo = build()
  nested = _nested_weighted(zoo.model)
  assert len(nested) >= zoo.nested, nested.keys()

  m = sc.compress(zoo.model, compressor=compressor)
  _fit(m, zoo, rng)
  _randomize(m, rng)
  killed = _kill(m, rng)
  _calibrate(m, zoo.inputs(rng, 32))

  # Channels were killed in every kind expected and in every nested model
  # (found by the names of its layers: compress() keeps them).
  kinds = {_kind(l) for l, dead in killed.items() if dead}
  assert set(zoo.kinds) <= kinds, (
      f"no channel killed in {set(zoo.kinds) - kinds}; compressed: "
      f"{sorted((l.name, _kind(l), dead) for l, dead in killed.items())}")
  names = {l.name for l, dead in killed.items() if dead}
  for sub, weighted in nested.items():
    assert not weighted or weighted & names, (
        f"no layer of the nested model {sub!r} lost channels: "
        f"{sorted(weighted)}; compressed: {sorted(l.name for l in killed)}")

  x = zoo.inputs(rng, 16)
  expected = np.asarray(m(x, training=False))
  assert expected.shape == (16, CLASSES)
  _assert_depends_on_input(expected)

  small = sc.shed(m)
  _assert_close(np.asarray(small(x, training=False)), expected, zoo.tol,
                "shed model")
  assert small.count_params() < m.count_params()
  size_small, size_m = sc.size(small), sc.size(m)
  assert size_small.bits == size_m.bits, _size_diff(size_small, size_m)

  sc.export(m, tmp_path / "sm")
  _assert_close(_serve(tmp_path / "sm", x), expected, zoo.tol,
                "served SavedModel")
