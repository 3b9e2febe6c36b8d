"""export(): a SavedModel that is small and computes what the model did."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import selfcompress as sc
from selfcompress import exporting, litert
from test_shedding import _kill, _randomize, conv_bn_flatten, mlp, residual


def _half_dead(build, rng, compressor="bits"):
  """A compressed `build()` with random BatchNorm statistics (so dead
  channels carry constants) and half of every layer's channels dead."""
  model = sc.compress(build(), compressor=compressor)
  _randomize(model, rng)
  _kill(model, rng)
  return model


def _serve(path, x):
  loaded = tf.saved_model.load(path)
  fn = loaded.signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  return fn(**{name: tf.constant(x)})["output"].numpy()


COMPRESSED = [(mlp, "bits"), (conv_bn_flatten, "bits"), (residual, "bits"),
              (mlp, "gates"), (conv_bn_flatten, "gates"),
              (mlp, "gates+bits"), (residual, "gates+bits")]


@pytest.mark.parametrize("build, compressor", COMPRESSED)
def test_saved_model_equals_quantized_forward(build, compressor, tmp_path):
  rng = np.random.default_rng(0)
  model = _half_dead(build, rng, compressor)
  for layer in model.layers:  # varied bit depths on the alive channels
    if isinstance(layer, sc.layers.CompressedLayer) and compressor != "gates":
      c = layer.compressor
      bits = np.asarray(c.raw_bits())
      c.assign(bits=np.where(bits > 0, rng.uniform(1.2, 7.9, bits.size), bits))
  x = rng.normal(size=(64,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  report = sc.export(model, tmp_path / "export")
  served = _serve(str(tmp_path / "export"), x)
  np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))
  saved = json.load(open(tmp_path / "export" / "selfcompress_export.json"))
  assert saved["packed_weight_bytes"] == report.packed_weight_bytes
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def _serve_in_session(path, x):
  """The TF1 loader of TF Serving and `saved_model_cli run`: restore, then
  the init op, then the signature, in a graph session."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    return sess.run(sig.outputs["output"].name,
                    {sig.inputs["inputs"].name: x})


def test_kernels_are_decoded_once_at_load_and_not_saved(tmp_path):
  rng = np.random.default_rng(2)
  models = [_half_dead(mlp, rng), _half_dead(conv_bn_flatten, rng),
            _half_dead(residual, rng, "gates+bits")]
  paths = [str(tmp_path / f"export{i}") for i in range(len(models))]
  for model, path in zip(models, paths):
    sc.export(model, path)
  for model, path in zip(models, paths):  # both loaded in one process
    x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(x, training=False))
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    for _ in range(2):
      np.testing.assert_allclose(fn(inputs=tf.constant(x))["output"].numpy(),
                                 expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_serve_in_session(path, x), expected,
                               atol=1e-5, rtol=0)
    # On disk: uint8 bit depths and codes, and float32 per-channel vectors
    # (scale, bias, BatchNorm's scale and shift), each kind in one variable
    # for all layers; no float kernel, flat or not: the float32 values are
    # exactly the shed model's alive channels' scales, its biases, and two
    # per BatchNorm channel.
    floats = 0
    for layer in sc.shed(model).layers:
      if isinstance(layer, sc.layers.CompressedLayer):
        alive = np.asarray(layer.compressor.state().alive) > 0
        floats += alive.sum() + (alive.size if layer.bias is not None else 0)
      elif isinstance(layer, keras.layers.BatchNormalization):
        floats += 2 * layer.gamma.shape[0]
    reader = tf.train.load_checkpoint(
        os.path.join(path, "variables", "variables"))
    stored = {name: dtype for name, dtype
              in reader.get_variable_to_dtype_map().items()
              if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(stored.values()) == {tf.uint8, tf.float32}, stored
    assert sum(reader.get_tensor(name).size for name, dtype in stored.items()
               if dtype == tf.float32) == floats
    # Decoded at load, not per call: the serving function reads the decoded
    # weights, and no op of the decoder is in it.
    ops = _function_ops(path, "serve")
    assert "TensorListGetItem" in ops, ops
    assert not ops & {"RightShift", "BitwiseAnd", "Cumsum", "TensorListSplit",
                      "UpperBound"}, ops


def _function_ops(path, name):
  """The op types of the SavedModel's function `name` (its `__inference_`
  FunctionDef in saved_model.pb)."""
  from tensorflow.core.protobuf import saved_model_pb2
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  (function,) = [f for f in proto.meta_graphs[0].graph_def.library.function
                 if f.signature.name.startswith(f"__inference_{name}_")]
  return {node.op for node in function.node_def}


@pytest.mark.parametrize("build, compressor", COMPRESSED)
def test_packed_codes_are_as_small_as_the_accounting_says(build, compressor,
                                                          tmp_path):
  # Random BatchNorm: dead channels carry constants; the accounting counts
  # the ones a padded convolution must still read, as shed() keeps them.
  # Gate-only channels are stored as float32: the accounting's 32 bits.
  model = _half_dead(build, np.random.default_rng(1), compressor)
  report = sc.export(model, tmp_path / "export")
  weight_bits = sum(l.weight_bits for l in sc.size(model).layers)
  groups = 8 * len([l for l in model.layers
                    if isinstance(l, sc.layers.CompressedLayer)])
  assert weight_bits <= report.packed_weight_bytes * 8 <= weight_bits + 8 * groups


@pytest.mark.parametrize("build", [mlp, conv_bn_flatten, residual])
def test_saved_model_costs_its_accounting_plus_a_dense_graph(build, tmp_path):
  """Issue 15: the whole folder within 1.1 x (the accounting + the graph of
  the dense model's own SavedModel) + 8 KB, even for these tiny models
  (hundreds of bytes of weights): the decoder is one subgraph for all
  layers (~10 KB), and two variables hold every weight (each costs ~1.7 KB
  of save, restore and checkpoint entries, which the dense model pays per
  kernel, bias and BatchNorm vector)."""
  model = _half_dead(build, np.random.default_rng(9))
  report = sc.export(model, tmp_path / "export")
  dense_graph = report.dense_float32_bytes - report.dense_weight_bytes
  assert report.total_bytes <= (
      1.1 * (report.accounting_bytes + dense_graph) + 8000), report
  if build is mlp:  # (no dead channel is kept for a padded convolution)
    # variables/: the accounting's bytes, plus the checkpoint's index and
    # object graph.
    assert report.weight_bytes <= report.accounting_bytes + 1000, report


def _deep(depth, conv):
  layers = [keras.Input((8, 8, 3) if conv else (12,))]
  for _ in range(depth):
    layers += ([keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(), keras.layers.ReLU()]
               if conv else [keras.layers.Dense(16, activation="relu")])
  if conv:
    layers.append(keras.layers.GlobalAveragePooling2D())
  return keras.Sequential(layers + [keras.layers.Dense(3)])


@pytest.mark.parametrize("conv", [False, True])
def test_each_layer_adds_a_little_graph_and_only_its_accounting(conv,
                                                                tmp_path):
  """Ten more layers (Dense, or Conv2D + BatchNorm + ReLU) add their ops and
  a few numbers to the graph, no per-layer decoder or variable: measured
  1.5 KB (Dense) and 3.0 KB (the Conv block) each, the dense model's own
  graph 5.3 and 15.8 KB. The variables grow by the accounting's bytes (and
  a padded convolution's dead channels, which shed() keeps)."""
  reports = []
  for depth in (2, 12):
    model = _half_dead(lambda: _deep(depth, conv), np.random.default_rng(3))
    reports.append(sc.export(model, tmp_path / f"export{depth}"))
  small, big = reports
  graph = (big.graph_bytes - small.graph_bytes) / 10
  dense = ((big.dense_float32_bytes - big.dense_weight_bytes)
           - (small.dense_float32_bytes - small.dense_weight_bytes)) / 10
  assert graph <= (3500 if conv else 2000) and graph <= dense / 3, (graph,
                                                                    dense)
  weights = ((big.weight_bytes - big.accounting_bytes)
             - (small.weight_bytes - small.accounting_bytes)) / 10
  assert abs(weights) <= (32 if conv else 2), weights


def test_every_kernel_layout_and_depth_decodes_exactly(tmp_path):
  """Weights whose channel is not the kernel's last axis (Conv2DTranspose:
  `(.., filters, in)`), whose channel axes are apart (an EinsumDense with
  output features from the kernel's first and last axes) or several
  (DepthwiseConv2D), channels deeper than the codes' `MAX_BITS` (stored
  as float32) next to 1-bit ones, and a BatchNormalization on another axis
  than the last (folded to a scale and shift): served as the model
  computes."""
  L = keras.layers
  inp = keras.Input((6, 6, 3))
  x = L.Conv2DTranspose(5, 3, strides=2, activation="relu")(inp)
  x = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
  x = L.BatchNormalization(axis=1)(L.Reshape((11 * 11, 10))(x))
  x = L.EinsumDense("abc,dce->abde", (121, 4, 3), bias_axes="de",
                    activation="relu")(x)
  model = sc.compress(keras.Model(inp, L.Dense(3)(L.Flatten()(x))))
  rng = np.random.default_rng(11)
  _randomize(model, rng)
  for layer in model.layers:
    if isinstance(layer, sc.layers.CompressedLayer):
      c = layer.compressor
      bits = rng.choice([-1.0, 0.5, 3.0, 8.0, 16.0, 20.0], c.num_channels)
      bits[0] = 20.0 if c.num_channels > 3 else 8.0  # (the logits live)
      c.assign(bits=bits, exponent=np.asarray(c.exponent()) + 8.0
               - np.ceil(np.maximum(bits, 1)))
  # Decoded, every weight is the serving model's, bit for bit.
  compact, _, _ = exporting.serving_models(model)
  decoded = compact.decode(tf.constant(compact.packed),
                           tf.constant(compact.floats))
  np.testing.assert_array_equal(decoded, np.concatenate(
      [np.ravel(v) for v in compact.weights]))
  assert (compact.packed[:compact.channels] == 32).any()
  assert compact.layout.shape[1] == 1 + 3 * 2  # two runs of channel axes
  x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
  expected = np.asarray(model(x, training=False))
  sc.export(model, tmp_path / "export")
  scale = np.abs(expected).max()
  np.testing.assert_allclose(_serve(str(tmp_path / "export"), x), expected,
                             atol=1e-5 * scale, rtol=1e-5)


def test_export_rejects_plain_models_and_never_half_writes(tmp_path):
  plain = mlp()
  with pytest.raises(ValueError, match="no self-compressing layers"):
    sc.export(plain, tmp_path / "a")
  model = sc.compress(mlp())
  sc.export(model, tmp_path / "b")
  with pytest.raises(FileExistsError, match="overwrite"):
    sc.export(model, tmp_path / "b")
  with pytest.raises(ValueError, match="format"):
    sc.export(model, tmp_path / "c", format="onnx")
  assert sorted(os.listdir(tmp_path)) == ["b"]


class _Scale(keras.layers.Layer):
  """A custom layer whose config does not rebuild it (no get_config)."""

  def __init__(self, factor):
    super().__init__()
    self.factor = factor

  def call(self, x):
    return x * self.factor


class _LearnedScale(_Scale):
  """The same with a weight: it cannot be shared or rebuilt."""

  def build(self, input_shape):
    self.w = self.add_weight(shape=input_shape[-1:], initializer="ones")

  def call(self, x):
    return x * self.w * self.factor


def test_layers_without_config_are_shared_if_stateless_else_refused(
    tmp_path, monkeypatch):
  inp = keras.Input((12,))
  x = keras.layers.Dense(8, activation="relu")(inp)
  model = sc.compress(keras.Model(inp, keras.layers.Dense(3)(_Scale(2.0)(x))))
  x = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
  sc.export(model, tmp_path / "a")
  np.testing.assert_allclose(_serve(str(tmp_path / "a"), x),
                             model(x, training=False), atol=1e-5)
  shutil.rmtree(tmp_path / "a")

  inp = keras.Input((12,))
  x = keras.layers.Dense(8, activation="relu")(inp)
  model = keras.Model(inp, keras.layers.Dense(3)(_LearnedScale(2.0)(x)))
  with pytest.raises(ValueError,
                     match="(?s)rebuild layer.*_LearnedScale.*get_config"):
    sc.compress(model)

  def fail(model, path):  # a crash halfway through writing
    os.makedirs(path)
    open(os.path.join(path, "saved_model.pb"), "wb").close()
    raise OSError("disk full")
  monkeypatch.setattr(exporting, "_write_saved_model", fail)
  with pytest.raises(OSError, match="disk full"):
    sc.export(sc.compress(mlp()), tmp_path / "b")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("build", [mlp, conv_bn_flatten, residual])
def test_litert_export_matches_within_float_tolerance(build, tmp_path):
  pytest.importorskip("ai_edge_litert.interpreter")
  rng = np.random.default_rng(2)
  model = _half_dead(build, rng)
  x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  path = str(tmp_path / "model.tflite")
  report = sc.export(model, path, format="tflite")
  assert os.path.getsize(path) == report.total_bytes
  served = litert.run_litert(path, x)
  np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))


def test_litert_float16_weights_halve_the_file(tmp_path):
  pytest.importorskip("ai_edge_litert.interpreter")
  rng = np.random.default_rng(3)
  model = _half_dead(lambda: keras.Sequential([
      keras.Input((10, 10, 3)), keras.layers.Conv2D(32, 3),
      keras.layers.BatchNormalization(), keras.layers.ReLU(),
      keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(4)]), rng)
  x = rng.normal(size=(8,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  sizes = {}
  for weights in ("float32", "float16"):
    path = str(tmp_path / f"{weights}.tflite")
    sizes[weights] = sc.export(model, path, format="tflite",
                               litert_weights=weights).total_bytes
    # float16 rounding of the folded weights: ~2^-11 relative per weight.
    np.testing.assert_allclose(litert.run_litert(path, x), expected,
                               atol=5e-3 * np.abs(expected).max(), rtol=0)
  # Mostly weights (16 x 1,024 after shedding): float16 halves them.
  assert sizes["float16"] < 0.6 * sizes["float32"], sizes
  with pytest.raises(ValueError, match="litert_weights"):
    sc.export(model, tmp_path / "x", litert_weights="int4")
  with pytest.raises(ValueError, match="format='tflite' only"):
    sc.export(model, tmp_path / "x", litert_weights="float16")


def test_export_tool_writes_both_formats(tmp_path):
  model = _half_dead(mlp, np.random.default_rng(4))
  model.save(tmp_path / "model.keras")
  tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tools", "export.py")
  x = np.random.default_rng(5).normal(size=(16, 12)).astype("float32")
  expected = np.asarray(model(x, training=False))
  # The inputs matter: every output moves with them, so a constant (or
  # input-blind) export could not match.
  assert (expected.std(axis=0) > 0.05 * np.abs(expected).max()).all()
  printed = {}
  for name, args in (("served", []),
                     ("m.tflite", ["--format=tflite",
                                   "--litert_weights=float16"])):
    done = subprocess.run([sys.executable, tool, f"--model={tmp_path}/model.keras",
                           f"--output={tmp_path / name}", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed[name] = done.stdout
  np.testing.assert_allclose(_serve(str(tmp_path / "served"), x), expected,
                             atol=1e-5)
  # The LiteRT file, run by the LiteRT interpreter (float16 weights: ~2^-11
  # relative rounding per weight).
  served = litert.run_litert(str(tmp_path / "m.tflite"), x)
  np.testing.assert_allclose(served, expected,
                             atol=5e-3 * np.abs(expected).max(), rtol=0)
  np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))
  # The printed report: a table, with the sizes that are on disk.
  folder = exporting._folder_bytes(tmp_path / "served")
  assert "SavedModel export:" in printed["served"]
  assert f"whole folder" in printed["served"] and f"{folder:,} B" in printed["served"]
  assert "packed weight codes" in printed["served"]
  assert "LiteRT export:" in printed["m.tflite"]
  assert f"{os.path.getsize(tmp_path / 'm.tflite'):,} B" in printed["m.tflite"]
  for out in printed.values():
    assert "dense float32" in out and "accounting" in out and "x" in out
    assert "ExportReport(" not in out


@pytest.mark.parametrize("format", ["saved_model", "tflite"])
def test_report_adds_up_and_matches_the_disk(format, tmp_path):
  model = _half_dead(mlp, np.random.default_rng(6))
  path = tmp_path / ("m.tflite" if format == "tflite" else "m")
  report = sc.export(model, path, format=format)
  on_disk = (os.path.getsize(path) if format == "tflite"
             else exporting._folder_bytes(path))
  assert report.total_bytes == on_disk == report.directory_bytes
  assert report.weight_bytes + report.graph_bytes == report.total_bytes
  assert report.weight_bytes > 0 and report.dense_weight_bytes > 0
  assert report.accounting_bytes == pytest.approx(sc.size(model).bytes)
  assert report.float32_accounting_bytes == pytest.approx(
      sc.size(model).float_bits / 8)
  text = str(report)
  assert text.count("\n") >= 5 and str(path) in text
  for n in (report.weight_bytes, report.graph_bytes, report.total_bytes,
            report.dense_float32_bytes, report.dense_weight_bytes):
    assert f"{n:,} B" in text
  ratio = report.dense_float32_bytes / report.total_bytes
  assert f"{ratio:.2f}x" in text
  if format == "saved_model":
    saved = json.load(open(path / exporting.REPORT))
    assert saved == json.loads(json.dumps(report.as_dict()))
    assert f"{report.packed_weight_bytes:,} B" in text
  else:
    assert report.packed_weight_bytes is None and "packed" not in text


def _modes(path):
  """Permission bits of `path` and everything under it."""
  out = {str(path): os.stat(path).st_mode & 0o777}
  for folder, dirs, files in os.walk(path):
    for name in dirs + files:
      out[os.path.join(folder, name)] = os.stat(
          os.path.join(folder, name)).st_mode & 0o777
  return out


def test_exports_get_the_usual_permissions(tmp_path):
  """0644 files and 0755 folders under the usual umask, not the owner-only
  0600/0700 that tempfile gives its files and folders."""
  umask = 0o022
  model = sc.compress(mlp())
  old = os.umask(umask)
  try:
    sc.export(model, tmp_path / "sm")
    sc.export(model, tmp_path / "m.tflite", format="tflite")
  finally:
    os.umask(old)
  for path, mode in {**_modes(tmp_path / "sm"),
                     **_modes(tmp_path / "m.tflite")}.items():
    want = (0o777 if os.path.isdir(path) else 0o666) & ~umask
    assert mode == want, (path, oct(mode), oct(want))


def test_interrupted_exports_leave_no_temporary_files(tmp_path, monkeypatch):
  """A KeyboardInterrupt mid-write: no hidden folder or file stays behind,
  and an export being overwritten is still there, whole."""
  model = sc.compress(mlp())
  out = tmp_path / "out"
  scratch = tmp_path / "scratch"  # the system temp folder, for this test
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  sc.export(model, out / "sm")
  before = sorted(os.listdir(out / "sm"))
  real_write = exporting._write_saved_model
  calls = []

  def interrupted(m, path):  # the compact model is written, then ^C
    calls.append(path)
    real_write(m, path)
    if len(calls) == 1:
      open(os.path.join(path, "partial"), "wb").close()
      raise KeyboardInterrupt
  monkeypatch.setattr(exporting, "_write_saved_model", interrupted)
  with pytest.raises(KeyboardInterrupt):
    sc.export(model, out / "sm", overwrite=True)
  written = list(calls)
  calls.clear()
  with pytest.raises(KeyboardInterrupt):
    sc.export(model, out / "new")
  calls += written
  assert os.listdir(out) == ["sm"] and sorted(os.listdir(out / "sm")) == before
  assert all(os.path.dirname(c).startswith(str(out)) for c in calls)
  monkeypatch.setattr(exporting, "_write_saved_model", real_write)

  def converter_interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model",
                      converter_interrupted)
  with pytest.raises(KeyboardInterrupt):
    sc.export(model, out / "m.tflite", format="tflite")
  monkeypatch.undo()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))

  def replace_interrupted(src, dst):
    raise KeyboardInterrupt
  monkeypatch.setattr(os, "replace", replace_interrupted)
  with pytest.raises(KeyboardInterrupt):  # the file is written, then ^C
    sc.export(model, out / "m.tflite", format="tflite")
  monkeypatch.undo()
  assert os.listdir(out) == ["sm"]
  # (TensorFlow's autograph leaves its generated modules there; not ours.)
  assert [p for p in os.listdir(scratch)
          if not p.startswith("__autograph_generated_file")] == []


def test_load_model_and_summary_of_a_path(tmp_path):
  model = _half_dead(conv_bn_flatten, np.random.default_rng(7))
  path = tmp_path / "m.keras"
  model.save(path)
  loaded = sc.load_model(path)
  x = np.random.default_rng(8).normal(size=(4, 10, 10, 3)).astype("float32")
  np.testing.assert_allclose(loaded(x, training=False),
                             model(x, training=False), atol=1e-6)
  lines = []
  report = sc.summary(str(path), print_fn=lines.append)
  assert report.bits == sc.size(model).bits and "Total:" in lines[0]
  assert sc.summary(path, print_fn=lines.append).bits == report.bits
  with pytest.raises(TypeError, match="Keras model, a SizeReport.*path"):
    sc.summary(3)
  with pytest.raises(FileNotFoundError, match="not a file"):
    sc.summary(str(tmp_path / "missing.keras"))


@keras.saving.register_keras_serializable(package="someone_else")
class _Twice(keras.layers.Layer):
  def call(self, x):
    return 2.0 * x


def test_load_model_names_what_is_not_registered(tmp_path, monkeypatch):
  """A file needing a class nobody imported: the message names it, its
  module, and says to import it (Keras' own says 'Could not locate')."""
  from keras.src.saving import object_registration
  model = sc.compress(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                        _Twice()]))
  model.save(tmp_path / "m.keras")
  registry = dict(object_registration.GLOBAL_CUSTOM_OBJECTS)
  del registry["someone_else>_Twice"]
  monkeypatch.setattr(object_registration, "GLOBAL_CUSTOM_OBJECTS", registry)
  with pytest.raises(TypeError) as info:
    sc.load_model(tmp_path / "m.keras")
  message = str(info.value)
  assert "'someone_else>_Twice' (module test_export)" in message
  assert "Import test_export" in message and "custom_objects" in message
  assert "selfcompress" not in message.split("Cannot load")[1].split(":")[1]
  loaded = sc.load_model(tmp_path / "m.keras",
                         custom_objects={"someone_else>_Twice": _Twice})
  assert isinstance(loaded.layers[-1], _Twice)


def test_selfcompress_classes_name_their_module_in_the_file(tmp_path):
  """Keras imports a registered class's module itself only for its own
  packages, so a process that never imported selfcompress cannot load the
  file with keras.models.load_model; the file names the module to import,
  and sc.load_model (or `import selfcompress`) loads it."""
  import zipfile
  model = sc.compress(mlp())
  model.save(tmp_path / "m.keras")
  config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
  assert config["registered_name"] == "selfcompress>SelfCompressingModel"
  assert config["module"].startswith("selfcompress.")
  from selfcompress import saving
  assert saving.unregistered_classes(tmp_path / "m.keras") == []
