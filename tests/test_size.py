"""Size accounting against numbers computed by hand.

Per compressed layer: sum over alive channels of ceil(b) * alive fan-in,
plus 32 bits of bias and 40 bits (uint8 bit depth + float32 scale) per alive
channel. BatchNorm: 64 bits per alive channel. Float reference: every
parameter at 32 bits, BatchNorm folded to 2 per channel.
"""

import keras
import numpy as np
import pytest

import selfcompress as sc
from selfcompress import layers


def _mlp():
  inp = keras.Input((6,))
  x = layers.Dense(5, activation="relu", name="d1")(inp)
  x = layers.Dense(4, activation="relu", name="d2")(x)
  out = layers.Dense(3, name="d3")(x)
  model = keras.Model(inp, out)
  set_bits(model, d1=[3, 0, 2.5, -1, 8], d2=[2, 2, 0, 4], d3=[1.5, 2, 3])
  return model


def set_bits(model, **bits):
  for name, b in bits.items():
    model.get_layer(name).compressor.assign(bits=np.array(b, "float32"))


def test_mlp_size_matches_hand_computation():
  report = sc.size(_mlp())
  d1, d2, d3 = report.layers
  # d1: 6 inputs, alive channels with ceil(b) = 3, 3, 8.
  assert (d1.channels_alive, d1.inputs_alive) == (3, 6)
  assert d1.weight_bits == 6 * (3 + 3 + 8)
  assert d1.other_bits == 3 * 32 + 3 * 40
  # d2: only 3 of its 5 inputs are alive.
  assert (d2.channels_alive, d2.inputs_alive, d2.inputs_total) == (3, 3, 5)
  assert d2.weight_bits == 3 * (2 + 2 + 4)
  assert d2.weights_alive == 9 and d2.weights_total == 20
  # d3: 3 alive inputs, ceil(1.5) = 2.
  assert d3.weight_bits == 3 * (2 + 2 + 3)
  assert report.bits == 777
  assert report.float_bits == (7 * 5 + 6 * 4 + 5 * 3) * 32 == 2368
  assert report.compression_ratio == pytest.approx(2368 / 777)
  assert report.kb == pytest.approx(777 / 8000)
  assert report.bits_per_weight == pytest.approx((84 + 24 + 21) / (18 + 9 + 9))


def _conv_net():
  inp = keras.Input((6, 6, 2))
  x = layers.Conv2D(4, 3, padding="same", name="c1")(inp)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU()(x)
  y = layers.Conv2D(4, 1, name="c2")(x)
  x = keras.layers.Add()([x, y])
  x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.Flatten()(x)
  out = layers.Dense(3, name="fc")(x)
  model = keras.Model(inp, out)
  set_bits(model, c1=[4, 0, 2, 0], c2=[0, 3, 0, 0], fc=[2, 2, 2])
  return model


def test_conv_bn_residual_flatten_matches_hand_computation():
  report = sc.size(_conv_net())
  c1, bn, c2, fc = report.layers
  # c1: channels 0 and 2 alive, 2 inputs x 3x3 each.
  assert c1.weight_bits == 18 * (4 + 2) and c1.other_bits == 2 * (32 + 40)
  # BatchNorm folds to scale + shift for the 2 alive channels.
  assert (bn.kind, bn.bits) == ("BatchNormalization", 2 * 64)
  # c2 (1x1) sees the 2 alive channels; only its channel 1 is alive.
  assert c2.inputs_alive == 2 and c2.weight_bits == 2 * 3
  assert c2.other_bits == 32 + 40
  # Add: channel 1 is dead in the c1 branch but alive through c2, so
  # channels {0, 1, 2} survive; Flatten of 3x3 positions gives 27 of 36.
  assert (fc.inputs_alive, fc.inputs_total) == (27, 36)
  assert fc.weight_bits == 27 * 2 * 3 and fc.other_bits == 3 * (32 + 40)
  assert report.bits == 252 + 128 + 78 + 378
  assert report.float_bits == (19 * 4 + 5 * 4 + 37 * 3) * 32 + 4 * 64


def test_channel_dead_in_every_branch_is_dropped_from_concat_and_depthwise():
  inp = keras.Input((5, 5, 3))
  a = layers.Conv2D(2, 1, name="a")(inp)
  b = layers.Conv2D(2, 1, name="b")(inp)
  x = keras.layers.Concatenate()([a, b])
  x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  out = layers.Dense(2, name="fc")(x)
  model = keras.Model(inp, out)
  set_bits(model, a=[0, 2], b=[3, 0], dw=[2] * 8, fc=[2, 2])
  report = sc.size(model)
  dw, fc = report.layer("dw"), report.layer("fc")
  # Concat gives alive [0, 1, 1, 0]; depthwise outputs 2c, 2c+1 follow c.
  assert (dw.inputs_alive, dw.channels_alive) == (2, 4)
  assert dw.weight_bits == 4 * 9 * 2
  assert fc.inputs_alive == 4


def test_uncompressed_layers_count_at_float32_and_nested_models_are_traced():
  inner = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="inner")])
  inp = keras.Input((4,))
  x = inner(inp)
  out = keras.layers.Dense(2, name="plain")(x)
  model = keras.Model(inp, out)
  model.get_layer(inner.name).get_layer("inner").compressor.assign(
      bits=[4, 0, 4])
  report = sc.size(model)
  plain = report.layer("plain")
  assert plain.inputs_alive == 2 and plain.weight_bits == 2 * 2 * 32
  assert plain.other_bits == 2 * 32


def test_size_penalty_is_differentiable_and_logged_size_agrees():
  import tensorflow as tf
  from selfcompress import accounting as size_lib
  mlp = _mlp()
  model = sc.SelfCompressingModel(mlp.input, mlp.output)
  with tf.GradientTape() as tape:
    terms = size_lib.account(model)
    q = size_lib.size_penalty(terms)
  bits_vars = [l.compressor.params for l in model.layers
               if hasattr(l, "compressor")]
  grads = tape.gradient(q, bits_vars)
  assert all(g is not None for g in grads)
  assert float(np.abs(grads[0][:, 0]).sum()) > 0  # the bit depths
  logs = model.size_logs()
  assert float(logs["size_kb"]) == pytest.approx(sc.size(model).kb)


def test_summary_prints_every_layer_and_totals(capsys):
  report = sc.summary(_conv_net())
  out = capsys.readouterr().out
  for name in ("c1", "bn", "c2", "fc", "Total", "float32"):
    assert name in out
  assert f"{report.kb:.3f} KB" in out
