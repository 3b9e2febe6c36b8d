"""export(format="keras"): a .keras file that Keras alone loads, holding
Keras' own int8/int4 layers with the learned integer codes."""

import json
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest
from keras.quantizers import unpack_int4

import selfcompress as sc
from selfcompress import keras_export
from test_export import _half_dead
from test_shedding import _kill, conv_bn_flatten, mlp

L = keras.layers


def _compressed(model):
  return [l for l in model._flatten_layers(include_self=False)
          if isinstance(l, sc.layers.CompressedLayer)]


def _set_bits(layer, rng, low, high):
  """Alive channels get bit depths drawn from [low, high], and exponents
  that put each one's largest |weight| near the top of its grid; dead
  channels stay dead."""
  c = layer.compressor
  bits = np.asarray(c.raw_bits())
  new = np.where(bits > 0, rng.uniform(low, high, bits.size), bits)
  kernel = np.abs(np.asarray(layer.kernel_variable))
  axes = tuple(i for i, d in enumerate(layer.kind.param_shape(layer)) if d == 1)
  top = np.maximum(2.0 ** (np.ceil(new) - 1) - 1, 0.5)
  c.assign(bits=new, exponent=np.log2(kernel.max(axis=axes).reshape(-1) / top))


def _mlp_case(rng):
  """int4 (<= 4 bits), int8 with 8-bit channels reaching code -128, and
  int8 with 5 to 8 bits."""
  model = _half_dead(mlp, rng)
  first, second, last = _compressed(model)
  _set_bits(first, rng, 1.2, 4.0)
  bits = np.asarray(second.compressor.raw_bits())
  second.compressor.assign(bits=np.where(bits > 0, 8.0, bits))
  # Exponents that put every channel's most negative weight below the
  # 8-bit grid: it clips to -128.
  low = np.abs(np.asarray(second.kernel_variable).min(axis=0))
  second.compressor.assign(exponent=np.log2(low) - 7.2)
  _set_bits(last, rng, 5.0, 8.0)
  x = rng.normal(size=(32, 12)).astype("float32")
  return model, x, {"dense": "int4", "dense_1": "int8", "dense_2": "int8"}


def _conv_case(rng):
  model = _half_dead(conv_bn_flatten, rng)
  *others, last = _compressed(model)
  for layer in others:
    _set_bits(layer, rng, 5.0, 8.0)
  _set_bits(last, rng, 1.5, 4.0)
  x = rng.normal(size=(16, 10, 10, 3)).astype("float32")
  return model, x, {"conv2d": "float32", "conv2d_1": "float32",
                    "dense": "int8", "dense_1": "int4"}


def _embedding_case(rng):
  """Keras scales a quantized Embedding per token (row): a table whose
  columns share one exponent is stored natively, one whose exponents
  differ stays float."""
  ids = keras.Input((6,), dtype="int32")
  x = L.Concatenate()([L.Embedding(20, 8, name="shared")(ids),
                       L.Embedding(20, 8, name="varied")(ids)])
  x = L.GlobalAveragePooling1D()(x)
  model = sc.compress(keras.Model(ids, L.Dense(3, name="head")(x)))
  _kill(model, rng)
  shared, varied, head = _compressed(model)
  _set_bits(shared, rng, 2.0, 4.0)
  shared.compressor.assign(exponent=-4.5)
  _set_bits(varied, rng, 2.0, 4.0)
  _set_bits(head, rng, 4.5, 8.0)
  x = rng.integers(0, 20, size=(32, 6)).astype("int32")
  return model, x, {"shared": "int4", "varied": "float32", "head": "int8"}


def _einsum_case(rng):
  """Traced and whole EinsumDense layers; one whose output axes are in
  another order than its kernel's, one whose kernel reads its contracted
  axis last (Keras' int4 layout then mixes channels: int8)."""
  inp = keras.Input((5, 8))
  x = L.EinsumDense("abc,cd->abd", (5, 6), bias_axes="d", activation="relu",
                    name="traced")(inp)
  y = L.EinsumDense("abc,cde->abde", (5, 3, 4), bias_axes="de",
                    name="heads")(x)
  z = L.EinsumDense("abc,ced->abde", (5, 4, 3), name="swapped")(x)
  w = L.EinsumDense("abc,dc->abd", (5, 4), name="contract_last")(x)
  x = L.Concatenate()([L.Flatten()(t) for t in (y, z, w)])
  model = sc.compress(keras.Model(inp, L.Dense(3, name="head")(x)))
  _kill(model, rng)
  bits = {"traced": (1.5, 3.0), "heads": (2.0, 4.0), "swapped": (5.0, 8.0),
          "contract_last": (1.5, 4.0), "head": (2.0, 4.0)}
  for layer in _compressed(model):
    _set_bits(layer, rng, *bits[layer.name])
  x = rng.normal(size=(16, 5, 8)).astype("float32")
  return model, x, {"traced": "int4", "heads": "int4", "swapped": "int8",
                    "contract_last": "int8", "head": "int4"}


def _gates_case(rng):
  model = _half_dead(mlp, rng, "gates")
  x = rng.normal(size=(32, 12)).astype("float32")
  return model, x, {"dense": "float32", "dense_1": "float32",
                    "dense_2": "float32"}


def _gated_bits_case(rng):
  model = _half_dead(mlp, rng, "gates+bits")
  x = rng.normal(size=(32, 12)).astype("float32")
  return model, x, {"dense": "int8", "dense_1": "int8", "dense_2": "int8"}


def _attention_case(rng):
  inp = keras.Input((4, 8))
  x = L.MultiHeadAttention(2, 4, name="attention")(inp, inp)
  model = sc.compress(keras.Model(inp, L.Dense(3, name="head")(
      L.Flatten()(x))))
  _kill(model, rng)
  x = rng.normal(size=(16, 4, 8)).astype("float32")
  return model, x, {"query": "float32", "key": "float32", "value": "float32",
                    "attention_output": "float32", "head": "int8"}


CASES = {"mlp": _mlp_case, "conv": _conv_case, "embedding": _embedding_case,
         "einsum": _einsum_case, "gates": _gates_case,
         "gated_bits": _gated_bits_case, "attention": _attention_case}

# Loads each export in a process where selfcompress cannot be imported, runs
# it, and saves its outputs and its quantized layers' stored arrays.
_LOADER = r"""
import sys
sys.modules["selfcompress"] = None  # before anything: Keras alone
try:
  import selfcompress
except ImportError:
  pass
else:
  raise SystemExit("selfcompress is importable")
import json
import keras
import numpy as np

def leaves(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from leaves(layer)
    else:
      yield layer

out = {}
for name, path in json.loads(sys.argv[1]).items():
  model = keras.saving.load_model(path)
  out[name + "/outputs"] = np.asarray(
      model(np.load(path + ".npy"), training=False))
  for layer in leaves(model):
    out[f"{name}/{layer.name}/policy"] = np.array(layer.dtype_policy.name)
    if layer.quantization_mode:
      stored = {v.name: v for v in layer.weights}
      out[f"{name}/{layer.name}/stored"] = np.asarray(
          stored.get("kernel", stored.get("embeddings")))
assert not any(m == "selfcompress" or m.startswith("selfcompress.")
               for m, v in sys.modules.items() if v is not None)
np.savez(sys.argv[2], **out)
"""


def _export_all(tmp):
  """Sets up, exports and runs every case, then loads every export with
  Keras alone (one process for all: importing TensorFlow takes seconds)."""
  rng = np.random.default_rng(0)
  cases = {}
  for name, make in CASES.items():
    keras.backend.clear_session()  # layer names as in the `want` tables
    model, x, want = make(rng)
    path = str(tmp / f"{name}.keras")
    sc.export(model, path, format="keras")
    np.save(path + ".npy", x)
    cases[name] = dict(want=want, path=path, small=sc.shed(model),
                       expected=np.asarray(model(x, training=False)))
  done = subprocess.run(
      [sys.executable, "-c", _LOADER,
       json.dumps({n: c["path"] for n, c in cases.items()}),
       str(tmp / "loaded.npz")],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == 0, done.stderr[-3000:]
  return cases, dict(np.load(tmp / "loaded.npz"))


def _codes(layer):
  """The learned integer codes of a compressed layer: `codes * step` is its
  quantized kernel (up to the rounding of a gate folded into the step)."""
  c = layer.compressor
  q = np.asarray(layer.effective_weights()[0])
  alive = (np.asarray(c.state().alive) > 0).reshape(
      layer.kind.param_shape(layer))
  step = np.asarray(c.scale()).reshape(alive.shape)
  codes = np.where(alive, np.rint(q / np.where(alive, step, 1.0)), 0)
  np.testing.assert_allclose(codes * step, q, rtol=3e-7, atol=0)
  return codes.astype(np.int64)


def _unpacked(stored, codes, mode):
  """The codes Keras holds: int4 ones are packed in pairs along the last
  axis of the kernel (of an EinsumDense's kernel reshaped to 2D)."""
  if mode == "int8":
    return stored
  rows = stored.shape[0]
  flat = np.asarray(unpack_int4(stored, codes.size // rows, axis=-1))
  return flat.reshape(codes.shape)


def _check(name, case, loaded):
  expected = case["expected"]
  # The outputs depend on the inputs: a constant model could not match.
  assert (expected.std(axis=0) > 0.01 * np.abs(expected).max()).all(), name
  np.testing.assert_allclose(loaded[name + "/outputs"], expected, rtol=0,
                             atol=1e-5 * np.abs(expected).max(), err_msg=name)
  records = keras_export.stored_as(case["path"])
  assert {k: v["stored"] for k, v in records.items()} == case["want"], name
  # Loaded here too (selfcompress imported; the file needs none of it).
  in_main = {l.name: l for l in keras.saving.load_model(
      case["path"])._flatten_layers(include_self=False)}
  small = {l.name: l for l in _compressed(case["small"])}
  for layer_name, mode in case["want"].items():
    where = f"{name}/{layer_name}"
    policy = in_main[layer_name].dtype_policy.name
    if mode == "float32":
      assert policy == "float32" and records[layer_name]["why"], where
      continue
    want = {"int8": "int8_from_float32", "int4": "int4/-1_from_float32"}
    assert policy == str(loaded[where + "/policy"]) == want[mode], where
    codes = _codes(small[layer_name])
    bits = records[layer_name]["bits"]
    assert bits <= (4 if mode == "int4" else 8), where
    assert -2 ** (bits - 1) <= codes.min() and codes.max() < 2 ** (bits - 1)
    for stored in (loaded[where + "/stored"],
                   np.asarray(next(v for v in in_main[layer_name].weights
                                   if v.name in ("kernel", "embeddings")))):
      assert stored.dtype == np.int8, where
      np.testing.assert_array_equal(_unpacked(stored, codes, mode), codes,
                                    err_msg=where)


def test_keras_alone_loads_our_codes_and_computes_what_the_model_does(
    tmp_path):
  """Every case's export, loaded by Keras in a process that cannot import
  selfcompress: the trained model's outputs, Keras' own int8/int4 layers
  holding our codes exactly, the other layers float, each with its reason."""
  cases, loaded = _export_all(tmp_path)
  for name, case in cases.items():
    _check(name, case, loaded)
  # An 8-bit channel's codes reach -128, and Keras stores it.
  codes = _codes(next(l for l in _compressed(cases["mlp"]["small"])
                      if l.name == "dense_1"))
  assert codes.min() == -128 and loaded["mlp/dense_1/stored"].min() == -128
  why = {n: {k: v["why"] for k, v in keras_export.stored_as(c["path"]).items()}
         for n, c in cases.items()}
  assert "cannot quantize Conv2D" in why["conv"]["conv2d"]
  assert "one scale per token" in why["embedding"]["varied"]
  assert "no integer codes" in why["gates"]["dense"]
  assert "MultiHeadAttention" in why["attention"]["query"]
  assert "not int4" in why["einsum"]["contract_last"]


def test_report_adds_up(tmp_path):
  keras.backend.clear_session()
  model, _, _ = _conv_case(np.random.default_rng(1))
  path = str(tmp_path / "m.keras")
  report = sc.export(model, path, format="keras")
  assert report.format == "keras" and report.path == path
  assert report.total_bytes == os.path.getsize(path)
  assert report.weight_bytes + report.graph_bytes == report.total_bytes
  arrays = []
  with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, \
      h5py.File(f) as h5:
    h5.visititems(lambda _, o: arrays.append(o.nbytes)
                  if isinstance(o, h5py.Dataset) else None)
  assert report.weight_bytes == sum(arrays)
  assert 0 < report.weight_bytes < report.dense_weight_bytes
  assert report.dense_weight_bytes < report.dense_float32_bytes
  assert report.accounting_bytes == pytest.approx(sc.size(model).bytes)
  assert report.float32_accounting_bytes == pytest.approx(
      sc.size(model).float_bits / 8)
  text = str(report)
  assert text.startswith(f"Keras (.keras) export: {path}")
  assert "weight arrays" in text and "ExportReport(" not in text
  for n in (report.weight_bytes, report.graph_bytes, report.total_bytes,
            report.dense_float32_bytes, report.dense_weight_bytes):
    assert f"{n:,} B" in text


def test_writes_atomically(tmp_path, monkeypatch):
  model = sc.compress(mlp())
  with pytest.raises(ValueError, match=".keras"):
    sc.export(model, tmp_path / "model.zip", format="keras")

  real_save = keras.Model.save

  def fail(self, path, *args, **kwargs):  # a crash halfway through writing
    if not str(path).startswith(str(tmp_path)):  # the dense reference
      return real_save(self, path, *args, **kwargs)
    with open(path, "wb") as f:
      f.write(b"PK half")
    raise OSError("disk full")
  path = tmp_path / "m.keras"
  sc.export(model, path, format="keras")
  before = open(path, "rb").read()
  with pytest.raises(FileExistsError):
    sc.export(model, path, format="keras")
  monkeypatch.setattr(keras.Model, "save", fail)
  with pytest.raises(OSError, match="disk full"):
    sc.export(model, path, format="keras", overwrite=True)
  with pytest.raises(OSError, match="disk full"):
    sc.export(model, tmp_path / "new.keras", format="keras")
  assert os.listdir(tmp_path) == ["m.keras"]
  assert open(path, "rb").read() == before
