"""LiteRT export: the learned integer codes as the file's weights."""

import os

import keras
import numpy as np
import pytest
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

import selfcompress as sc
from selfcompress import litert
from test_shedding import conv_bn_flatten, depthwise_separable, mlp, residual

pytest.importorskip("ai_edge_litert.interpreter")
L = keras.layers


def _grid(model, rng, low=1.5, high=7.9, dead=0.5, exact8=(), ranges=None):
  """A compressed `model` with every compressed layer's channels on varied
  bit depths in [low, high] (the layers named in `exact8` at exactly 8
  bits), exponents that put each channel's largest weight on its grid's top,
  a `dead` fraction of the channels dead, and BatchNorm statistics with
  some negative scales (folded into the weights by the converter).
  `ranges` maps layer names to their own (low, high)."""
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n))
      layer.beta.assign(rng.normal(size=n) * 0.1)
      layer.moving_mean.assign(rng.normal(size=n) * 0.1)
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    if not isinstance(layer, sc.layers.CompressedLayer):
      continue
    c = layer.compressor
    n = c.num_channels
    bits = rng.uniform(*(ranges or {}).get(layer.name, (low, high)), n)
    if layer.name in exact8:
      bits[:] = 8.0
    kernel = np.asarray(layer.kernel_variable)
    shape = layer.kind.param_shape(layer)
    axes = tuple(i for i, d in enumerate(shape) if d == 1)
    top = np.abs(kernel).max(axis=axes).reshape(-1)
    exponent = np.log2(top / np.maximum(2.0 ** (np.floor(bits) - 1) - 1, 1))
    if layer.name in exact8:  # the largest |w| on -128 (or clipped to 127)
      exponent = np.log2(top / 128)
    alive = rng.random(n) >= dead
    alive[rng.integers(n)] = True
    c.assign(bits=np.where(alive, bits, -1.0), exponent=exponent)
  return model


def _inputs(model, rng, n=64):
  x = rng.normal(size=(n,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  # The outputs move with the inputs, so an export that ignored them (or a
  # model computing a constant) could not match.
  assert (expected.std(axis=0) > 1e-3 * np.abs(expected).max()).all()
  return x, expected


def _unpack(data, bits, count):
  """LiteRT's packed `bits`-bit two's complement, element 0 lowest."""
  raw = np.frombuffer(bytes(data), np.uint8)
  if bits == 8:
    return raw.view(np.int8)[:count].astype(np.int64)
  per = 8 // bits
  values = (raw[:, None] >> (np.arange(per) * bits).astype(np.uint8)) & (2 ** bits - 1)
  values = values.reshape(-1)[:count].astype(np.int64)
  return np.where(values >= 2 ** (bits - 1), values - 2 ** bits, values)


_WIDTH = {schema.TensorType.INT8: 8, schema.TensorType.INT4: 4,
          schema.TensorType.INT2: 2}


def _integer_weights(path):
  """Every integer-typed weight tensor of the file: (codes, scales, axis),
  codes in the tensor's shape."""
  model = flatbuffer_utils.read_model(path)
  found = []
  for t in model.subgraphs[0].tensors:
    data = model.buffers[t.buffer].data
    if t.type in _WIDTH and len(t.shape) >= 2 and data is not None and len(data):
      codes = _unpack(data, _WIDTH[t.type], int(np.prod(t.shape)))
      found.append((_WIDTH[t.type], codes.reshape(t.shape),
                    np.asarray(t.quantization.scale),
                    t.quantization.quantizedDimension))
  return found


def _learned(model):
  """Each alive channel's sorted codes and scale, per compressed layer."""
  small = sc.shed(model)
  out = {}
  for layer in small.layers:
    if isinstance(layer, sc.layers.CompressedLayer):
      c = layer.compressor
      codes, scale = c.codes(layer.kernel_variable)
      shape = layer.kind.param_shape(layer)
      axes = [i for i, d in enumerate(shape) if d != 1]
      codes = np.array(codes)
      rest = [i for i in range(codes.ndim) if i not in axes]
      rows = np.transpose(codes, axes + rest).reshape(c.num_channels, -1).copy()
      # Shedding keeps a dead channel that another path needs (a residual
      # sum's): all zeros, at no bits.
      alive = np.asarray(c.state().alive) > 0
      rows[~alive] = 0
      out[layer.name] = (np.sort(rows, axis=1).astype(np.int64),
                         np.asarray(c.scale()).reshape(-1),
                         np.where(alive, np.asarray(c.state().storage_bits), 0))
  return out


BUILDS = [mlp, conv_bn_flatten, residual, depthwise_separable]


@pytest.mark.parametrize("build", BUILDS)
def test_litert_weights_are_the_learned_codes_and_outputs_equal(build, tmp_path):
  rng = np.random.default_rng(0)
  model = _grid(sc.compress(build()), rng)
  x, expected = _inputs(model, rng)
  path = str(tmp_path / "m.tflite")
  report = sc.export(model, path, format="tflite")
  assert report.compute == "float"
  served = litert.run_litert(path, x)
  np.testing.assert_allclose(served, expected,
                             atol=1e-5 * np.abs(expected).max(), rtol=0)
  # Every compressed layer is stored as integers, read back from the file
  # (not from the report): each tensor's channels hold exactly some
  # layer's alive channels' codes; unfolded ones keep the learned 2^e.
  learned = _learned(model)
  assert {r.layer for r in report.layers} == set(learned)
  assert all(r.storage.startswith("int") for r in report.layers), report
  stored = _integer_weights(path)
  assert len(stored) == len(learned)
  for width, codes, scales, axis in stored:
    rows = np.sort(np.moveaxis(codes, axis, 0).reshape(codes.shape[axis], -1), 1)
    # A channel whose folded BatchNorm scale is negative stores -codes.
    name = next(n for n, (want, _, _) in learned.items()
                if want.shape == rows.shape and (
                    (rows == want).all(1) | (np.sort(-rows, 1) == want).all(1)
                ).all())
    want, scale, bits = learned[name]
    assert width == min(w for w in (2, 4, 8) if w >= bits.max()) or width == 8
    if build is mlp:  # nothing folded into a Dense's weights here
      assert (scales == scale).all()


def test_litert_picks_int2_int4_int8_by_bit_depth(tmp_path):
  rng = np.random.default_rng(1)
  model = sc.compress(keras.Sequential([
      keras.Input((20,)), L.Dense(24, activation="relu"),
      L.Dense(16, activation="tanh"), L.Dense(12, activation="relu"),
      L.Dense(5)]))
  names = [l.name for l in model.layers
           if isinstance(l, sc.layers.CompressedLayer)]
  _grid(model, rng, dead=0.3, ranges=dict(zip(names, [
      (1.2, 2.0), (2.2, 4.0), (4.5, 7.9), (1.2, 7.9)])))
  x, expected = _inputs(model, rng)
  path = str(tmp_path / "m.tflite")
  report = sc.export(model, path, format="tflite")
  assert [r.storage for r in report.layers] == ["int2", "int4", "int8", "int8"]
  np.testing.assert_allclose(litert.run_litert(path, x), expected,
                             atol=1e-5 * np.abs(expected).max(), rtol=0)
  assert sorted(w for w, *_ in _integer_weights(path)) == [2, 4, 8, 8]
  # Integer weights: the file is the accounting plus a fixed graph.
  assert report.weight_bytes < 1.1 * report.accounting_bytes + 400


def test_code_minus_128_is_exact_in_float_and_clamped_for_integer_kernels(
    tmp_path):
  rng = np.random.default_rng(2)
  model = sc.compress(mlp())
  first = next(l for l in model.layers
               if isinstance(l, sc.layers.CompressedLayer))
  _grid(model, rng, exact8=(first.name,))
  x, expected = _inputs(model, rng)
  codes, _ = first.compressor.codes(first.kernel_variable)
  minus = int((np.asarray(codes) == -128).sum())
  assert minus > 0  # the grid's top puts some weight on -128 at 8 bits
  path = str(tmp_path / "float.tflite")
  report = sc.export(model, path, format="tflite")
  assert report.clamped_codes == 0
  assert min(c.min() for _, c, _, _ in _integer_weights(path)) == -128
  np.testing.assert_allclose(litert.run_litert(path, x), expected,
                             atol=1e-5 * np.abs(expected).max(), rtol=0)
  path = str(tmp_path / "dynamic.tflite")
  report = sc.export(model, path, format="tflite", litert_compute="dynamic")
  assert report.clamped_codes >= minus - 1  # one channel may be dead
  assert report.clamped_codes > 0 and "-127" in str(report)
  assert min(c.min() for _, c, _, _ in _integer_weights(path)) == -127
  assert all(r.kernel == "integer" for r in report.layers)
  served = litert.run_litert(path, x)
  # Dynamic-range kernels quantize the activations: close, not equal.
  assert np.abs(served - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.parametrize("build, low, high", [
    (conv_bn_flatten, 3.0, 7.9), (depthwise_separable, 3.0, 7.9),
    (conv_bn_flatten, 2.0, 4.0)])
def test_integer_kernels_and_full_integer_agree_on_argmax(build, low, high,
                                                          tmp_path):
  rng = np.random.default_rng(3)
  model = _grid(sc.compress(build()), rng, low=low, high=high)
  x, expected = _inputs(model, rng, n=256)
  for compute in ("dynamic", "integer"):
    path = str(tmp_path / f"{compute}.tflite")
    report = sc.export(
        model, path, format="tflite", litert_compute=compute,
        representative_data=x[:128] if compute == "integer" else None)
    assert report.compute == compute
    served = litert.run_litert(path, x)
    agree = (served.argmax(1) == expected.argmax(1)).mean()
    assert agree >= 0.95, (compute, agree)  # seen: 0.977 to 1.0
    if compute == "integer":
      details = flatbuffer_utils.read_model(path).subgraphs[0]
      assert details.tensors[details.inputs[0]].type == schema.TensorType.INT8
      assert details.tensors[details.outputs[0]].type == schema.TensorType.INT8
      # The learned codes, not the converter's: every stored channel's
      # codes are some layer's alive channel's codes, up to sign.
      learned = _learned(model)
      ours = [r for r in report.layers if not r.note]
      assert ours, report
      matched = 0
      for _, codes, _, axis in _integer_weights(path):
        rows = np.sort(np.abs(np.moveaxis(codes, axis, 0).reshape(
            codes.shape[axis], -1)), 1)
        matched += any(rows.shape == w.shape
                       and (np.sort(np.abs(w), 1) == rows).all()
                       for w, _, _ in learned.values())
      assert matched >= len(ours)
      if high <= 4:  # int4 weights with int8 activations: FC and CONV_2D
        assert {r.storage for r in ours} == {"int4"}, report


def test_litert_arguments_are_checked(tmp_path):
  model = sc.compress(mlp())
  with pytest.raises(ValueError, match="representative_data"):
    sc.export(model, tmp_path / "m.tflite", format="tflite",
              litert_compute="integer")
  with pytest.raises(ValueError, match="litert_weights='codes'"):
    sc.export(model, tmp_path / "m.tflite", format="tflite",
              litert_weights="float32", litert_compute="dynamic")
  with pytest.raises(ValueError, match="litert_compute"):
    sc.export(model, tmp_path / "m.tflite", format="tflite",
              litert_compute="int4")
  with pytest.raises(ValueError, match="format='tflite' only"):
    sc.export(model, tmp_path / "m", litert_compute="dynamic")
  assert not os.listdir(tmp_path)


def test_mixed_precision_model_exports_computing_in_float32(tmp_path):
  rng = np.random.default_rng(4)
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = sc.compress(keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(8, 3), L.BatchNormalization(),
        L.ReLU(), L.Flatten(), L.Dense(10),
        L.Activation("linear", dtype="float32")]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  _grid(model, rng, low=3.0)
  x, expected = _inputs(model, rng)
  path = str(tmp_path / "m.tflite")
  report = sc.export(model, path, format="tflite")
  assert len(report.layers) == 2, report
  assert all(r.storage.startswith("int") for r in report.layers), report
  served = litert.run_litert(path, x)
  # LiteRT computes in float32; the model's activations were float16.
  np.testing.assert_allclose(served, expected,
                             atol=4e-3 * np.abs(expected).max(), rtol=0)
