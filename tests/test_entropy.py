"""Entropy-coded storage: the rANS coder, and the size accounting and the
SavedModel export of layers with `storage="entropy"`."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from selfcompress import codes as codes_lib
from selfcompress import entropy, exporting

L = keras.layers


def _laplacian(rng, n, zeros=0.49, scale=2.0, bits=4):
  """Codes like trained ones: Laplacian, many zeros, clipped to `bits`."""
  codes = np.rint(rng.laplace(0.0, scale, n)).astype(np.int64)
  codes[rng.random(n) < zeros] = 0
  return np.clip(codes, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _streams(rng):
  return {
      "uniform": rng.integers(-8, 8, 5000),
      "skewed": _laplacian(rng, 20000),
      "one code": np.full(3000, -3),
      "one code, once": np.array([7]),
      "negative": -1 - rng.geometric(0.3, 2000),
      "16 bits": rng.integers(-(1 << 15), 1 << 15, 3000),
      "16-bit extremes": np.array([-(1 << 15), (1 << 15) - 1] * 5),
      "empty": np.zeros(0, np.int64),
      "two lanes": _laplacian(rng, entropy.LANE_SYMBOLS + 1, bits=6),
  }


def test_numpy_and_tensorflow_decoders_give_the_codes_back():
  streams = _streams(np.random.default_rng(0))
  data = {name: entropy.encode(codes) for name, codes in streams.items()}
  for name, codes in streams.items():
    decoded = entropy.decode(data[name], codes.size)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, codes, err_msg=name)
    assert entropy.coded_bits(codes) == 8 * len(data[name])
    # Deterministic: the same codes give the same bytes.
    assert entropy.encode(codes.copy()) == data[name]
  assert data["empty"] == b""
  # TensorFlow decodes every stream at once, from one array.
  names = list(streams)
  starts = np.cumsum([0] + [len(data[n]) for n in names])[:-1]
  joined = np.frombuffer(b"".join(data[n] for n in names), np.uint8)
  decoded = entropy.decode_tf(
      tf.constant(joined), [(a, streams[n].size) for a, n in zip(starts, names)])
  np.testing.assert_array_equal(decoded, np.concatenate(
      [streams[n] for n in names]))
  for name in ("skewed", "one code"):  # and each alone
    np.testing.assert_array_equal(entropy.decode_tf(tf.constant(
        np.frombuffer(data[name], np.uint8)), [(0, streams[name].size)]),
                                  streams[name])


def test_the_coder_writes_what_the_quantised_model_says():
  rng = np.random.default_rng(1)
  for codes in [_laplacian(rng, 100), _laplacian(rng, 5000),
                _laplacian(rng, 100000), _laplacian(rng, 30000, bits=8,
                                                     scale=9.0),
                rng.integers(-2, 2, 7000), np.full(50, 4)]:
    counts = np.bincount(codes - codes.min())
    ideal = entropy.ideal_bits(counts, codes.min())
    written = entropy.coded_bits(codes)
    # A lane's final state holds 0 to 8 bits of the codes: within a byte
    # per lane of the model's length.
    slack = 8 * entropy.lanes(codes.size) + 1
    assert ideal - slack <= written <= ideal + 8, (codes.size, written, ideal)
  # The quantised model is close to the histogram's entropy.
  codes = _laplacian(rng, 100000)
  p = np.bincount(codes - codes.min()) / codes.size
  p = p[p > 0]
  information = -codes.size * np.sum(p * np.log2(p))
  assert entropy.coded_bits(codes) < 1.01 * information + 8 * 64 * 3
  assert entropy.ideal_bits(np.zeros(3)) == 0


def test_encoding_a_large_layer_takes_well_under_a_second_or_two():
  codes = _laplacian(np.random.default_rng(2), 266_000)  # LeNet-300-100
  start = time.perf_counter()
  data = entropy.encode(codes)
  assert time.perf_counter() - start < 4.0  # (~0.15 s, on a shared machine)
  start = time.perf_counter()
  np.testing.assert_array_equal(entropy.decode(data, codes.size), codes)
  assert time.perf_counter() - start < 4.0


def test_corrupt_or_truncated_streams_are_refused():
  rng = np.random.default_rng(3)
  codes = _laplacian(rng, 9000)
  data = entropy.encode(codes)
  with pytest.raises(entropy.CorruptStreamError, match="truncated"):
    entropy.decode(data[:-3], codes.size)
  with pytest.raises(entropy.CorruptStreamError, match="truncated"):
    entropy.decode(data[:3], codes.size)
  with pytest.raises(entropy.CorruptStreamError, match="truncated"):
    entropy.decode(data[:20], codes.size)
  with pytest.raises(entropy.CorruptStreamError):
    entropy.decode(data + b"\0", codes.size)
  with pytest.raises(entropy.CorruptStreamError):
    entropy.decode(data, codes.size + 1)
  with pytest.raises(entropy.CorruptStreamError, match="empty"):
    entropy.decode(b"\1", 0)
  header = entropy._parse_header(np.frombuffer(data, np.uint8))[-1]
  for at in rng.choice(np.arange(header, len(data)), 20, replace=False):
    broken = bytearray(data)
    broken[at] ^= 1 << int(rng.integers(8))
    with pytest.raises(entropy.CorruptStreamError, match="corrupt"):
      entropy.decode(bytes(broken), codes.size)
  broken = bytearray(data)
  broken[5] ^= 1  # the table's first frequency
  with pytest.raises(entropy.CorruptStreamError, match="corrupt"):
    entropy.decode(bytes(broken), codes.size)
  with pytest.raises(ValueError, match="Codes must lie"):
    entropy.encode([1 << 15])
  with pytest.raises(ValueError, match="integer"):
    entropy.encode([0.5])


# -- the storage rule: size() and the SavedModel ------------------------------


def _set_bits(model, rng, bits, dead_fraction=0.3, protect=()):
  """Gives each compressed layer's channels bit depths from `bits`, and
  exponents that fit each channel's largest weight to its grid (so the
  codes spread over it), with some channels of every layer dead."""
  for layer in model.layers:
    if not isinstance(layer, sc.layers.CompressedLayer):
      continue
    c = layer.compressor
    n = c.num_channels
    b = rng.choice(bits, n).astype("float32")
    if layer.name not in protect:
      dead = rng.random(n) < dead_fraction
      dead[rng.integers(n)] = True
      if dead.all():
        dead[rng.integers(n)] = False
      b[dead] = -1.0
    kernel = np.asarray(layer.kind.kernel(layer))
    axes = tuple(i for i, d in enumerate(layer.kind.param_shape(layer))
                 if d == 1)
    top = np.abs(kernel).max(axis=axes).reshape(-1) + 1e-6
    exponent = np.log2(top / np.maximum(2.0 ** (np.maximum(b, 1) - 1) - 1,
                                        0.5))
    c.assign(bits=b, exponent=exponent)


def _streams_of(model):
  """Each entropy-coded kernel's stream in the SavedModel form of `model`."""
  compact, _, _ = exporting.serving_models(model)
  names = [v.path.split("/")[-2] for v in compact.weights]
  coded = [p for p in zip(names, compact.entropy) if p[1]]
  tail = compact.packed[compact.channels + compact.packed_code_bytes:]
  starts = [a for a, _ in compact.streams] + [tail.size]
  return compact, {name: tail[a:b].tobytes() for (name, _), a, b in zip(
      coded, starts, starts[1:])}


def _check_size_and_export(model, x, tmp_path, compressor):
  report = sc.size(model)
  shed = sc.size(sc.shed(model))
  terms = sc.accounting.account(model)
  compact, streams = _streams_of(model)
  assert streams, "no layer stored entropy-coded"
  for layer in model.layers:
    if codes_lib.storage(layer) != "entropy":
      continue
    row = report.layer(layer.name)
    t = terms[layer]
    # The stream is the codes of the alive channels on the alive inputs,
    # in the kernel's order: its bytes are the row's weights (but those of
    # channels too deep for codes, at their fixed width), whether the
    # model is shed or not, and the export stores exactly them.
    assert row.weight_bits == shed.layer(layer.name).weight_bits
    bits = np.asarray(layer.compressor.state().storage_bits)
    deep = (np.asarray(t["alive"]) > 0) & (bits > 16)
    deep_bits = int(np.sum(bits[deep] * np.asarray(t["fan_in"])[deep]))
    assert row.weight_bits == 8 * len(streams[layer.name]) + deep_bits, \
        layer.name
    stored = codes_lib.stored(codes_lib.of(layer), codes_lib.input_mask(
        layer, t["in_alive"]), t["alive"])[0]
    assert entropy.encode(stored) == streams[layer.name]
    assert stored.size + int(np.asarray(t["fan_in"])[deep].sum()) == \
        row.weights_alive
  # Decoded at load, every weight is the serving model's (bit for bit
  # but for a gate's rounding: `codes * (2^e * gate)`).
  decoded = compact.decode(tf.constant(compact.packed),
                           tf.constant(compact.floats))
  np.testing.assert_allclose(decoded, np.concatenate(
      [np.ravel(v) for v in compact.weights]), rtol=3e-7, atol=0)
  expected = np.asarray(model(x, training=False))
  # The outputs depend on the input (not a constant network).
  assert expected.std(axis=0).max() > 0.1 * np.abs(expected).max()
  export = sc.export(model, tmp_path / f"export_{compressor}")
  loaded = tf.saved_model.load(str(tmp_path / f"export_{compressor}"))
  served = loaded.signatures["serving_default"](
      inputs=tf.constant(x))["output"].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-5)
  # The packed weight codes are the streams (and any float32 channels).
  assert export.packed_weight_bytes == compact.packed_code_bytes + sum(
      len(s) for s in streams.values()) + 4 * compact.kernel_floats
  assert compact.packed_code_bytes == 0
  return report, compact


@pytest.mark.parametrize("compressor",
                         ["bits", "gates+bits", "inputs+bits", "sparse_bits"])
def test_size_counts_the_stream_the_saved_model_stores(compressor, tmp_path):
  """Dense and Conv2D layers, every one with dead channels (so the next one
  has dead inputs; input gates close more): size() counts each layer's
  stream exactly as the SavedModel stores it, shed or not, and the
  SavedModel computes what the model does."""
  rng = np.random.default_rng(4)
  base = keras.Sequential([
      keras.Input((8, 8, 3)), L.Conv2D(8, 3, activation="relu"),
      L.Conv2D(6, 3, activation="relu"), L.Flatten(),
      L.Dense(24, activation="relu"), L.Dense(5)])
  model = sc.compress(base, compressor=compressor, storage="entropy",
                      protect_outputs=False, min_channels=0)
  _set_bits(model, rng, [2.0, 3.0, 4.5, 6.0])
  if compressor == "gates+bits":  # gates folded in, some closed
    for layer in model.layers:
      if not isinstance(layer, sc.layers.CompressedLayer):
        continue
      c = layer.compressor
      c.assign_log_alpha(np.where(rng.random(c.num_channels) < 0.2, -6.0,
                                  rng.uniform(-1.5, 3.0, c.num_channels)))
  if compressor == "sparse_bits":  # dead zones, some spanning a channel
    for layer in model.layers:
      if isinstance(layer, sc.layers.CompressedLayer):
        c = layer.compressor
        t = rng.uniform(0.5, 3.0, c.num_channels)
        t[rng.integers(c.num_channels)] = 1e4
        c.assign_threshold(t)
  if compressor == "inputs+bits":  # inputs that some layers do not read
    for layer in model.layers[2:]:
      if isinstance(layer, sc.layers.CompressedLayer):
        c = layer.compressor
        n = np.asarray(c.input_log_alpha()).size
        c.assign_input_log_alpha(np.where(rng.random(n) < 0.3, -6.0, 3.0))
  report, _ = _check_size_and_export(
      model, rng.normal(size=(32, 8, 8, 3)).astype("float32"), tmp_path,
      compressor)
  for row in report.layers:
    assert row.channels_alive < row.channels_total, row
    if row.name != "conv2d":
      assert row.inputs_alive < row.inputs_total, row


def test_every_kernel_layout_stores_the_accounted_stream(tmp_path):
  """Grouped, depthwise and transposed convolutions and an EinsumDense,
  with dead channels, 1-bit channels and channels too deep for codes
  (stored as float32): shed() keeps some dead channels (whole groups, a
  depthwise convolution's inputs), whose weights are then stored as 0."""
  rng = np.random.default_rng(5)
  inp = keras.Input((10, 10, 4))
  x = L.Conv2D(8, 3, activation="relu")(inp)
  x = L.Conv2D(6, 3, padding="same", groups=2, activation="relu")(x)
  x = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
  x = L.Conv2DTranspose(5, 3, strides=2, activation="relu")(x)
  x = L.Dense(12, activation="relu")(L.Flatten()(x))
  x = L.EinsumDense("ab,bc->ac", 7, bias_axes="c", activation="relu")(x)
  model = sc.compress(keras.Model(inp, L.Dense(4)(x)), storage="entropy")
  _set_bits(model, rng, [1.0, 3.0, 5.0, 20.0], protect=("dense_1",))
  _, compact = _check_size_and_export(
      model, rng.normal(size=(16, 10, 10, 4)).astype("float32"), tmp_path,
      "layouts")
  assert compact.inputs is not None and not compact.inputs.all()
  assert compact.kernel_floats  # (the 20-bit channels)


def test_kept_dead_channels_with_constants_keep_their_weights(tmp_path):
  """A dead channel that shed() keeps (a grouped convolution's group) and
  that carries a constant (a BatchNorm's shift) reaches the next layer
  through its weights: they stay in the stream (more than size() counts:
  the accounting folds such a constant into a bias), and the export stays
  exact."""
  rng = np.random.default_rng(7)
  model = sc.compress(keras.Sequential([
      keras.Input((6, 6, 3)), L.Conv2D(4, 3), L.BatchNormalization(),
      L.Conv2D(4, 3, groups=2), L.Flatten(), L.Dense(3)]),
      storage="entropy")
  norm, = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
  norm.beta.assign(rng.uniform(0.5, 1.0, 4))
  _set_bits(model, rng, [4.0], dead_fraction=0.0, protect=("conv2d_1",
                                                             "dense"))
  model.get_layer("conv2d").compressor.assign(bits=[-1.0, 4.0, 4.0, 4.0])
  x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
  expected = np.asarray(model(x, training=False))
  sc.export(model, tmp_path / "export")
  served = tf.saved_model.load(str(tmp_path / "export")).signatures[
      "serving_default"](inputs=tf.constant(x))["output"].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-5)
  _, streams = _streams_of(model)
  counted = sc.size(model).layer("conv2d_1").weight_bits
  assert 8 * len(streams["conv2d_1"]) > counted


def test_fixed_width_exports_say_they_do_not_entropy_code(tmp_path):
  rng = np.random.default_rng(6)
  model = sc.compress(keras.Sequential([
      keras.Input((12,)), L.Dense(16, activation="relu"), L.Dense(3)]),
      per_layer={"dense": sc.compressors.BitDepth(storage="entropy")})
  _set_bits(model, rng, [3.0])
  report = sc.export(model, tmp_path / "m.keras", format="keras")
  (note,) = report.notes
  assert note.startswith("dense: storage='entropy', stored here at fixed "
                         "width (Keras cannot")
  assert "note: dense: storage='entropy'" in str(report)
  litert = sc.export(model, tmp_path / "m.tflite", format="tflite")
  assert litert.notes == (note.replace("Keras", "LiteRT"),)
  saved = sc.export(model, tmp_path / "saved")
  assert saved.notes == ()
