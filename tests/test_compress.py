import math
import warnings

import keras
import numpy as np
import pytest

import selfcompress as sc
from selfcompress import layers


def _blobs(n=3000, dim=16, classes=8, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(scale=2.5, size=(classes, dim))
  y = rng.integers(0, classes, size=n)
  x = centers[y] + rng.normal(size=(n, dim))
  return x.astype("float32"), y.astype("int32")


def _functional():
  inp = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
  x = keras.layers.BatchNormalization()(x)
  y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
  x = keras.layers.Add()([x, y])
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(16, activation="relu")(x)
  out = keras.layers.Dense(4, activation="softmax")(x)
  return keras.Model(inp, out)


def test_compress_functional_keeps_weights_and_function():
  model = _functional()
  x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
  cm = sc.compress(model, bits_init=12)
  assert isinstance(cm, sc.SelfCompressingModel)
  kinds = [type(l).__name__ for l in cm.layers
           if isinstance(l, layers.CompressedLayer)]
  assert kinds == ["Conv2D", "DepthwiseConv2D", "Dense", "Dense"]
  np.testing.assert_allclose(cm(x), model(x), atol=2e-3)
  # The input model is untouched.
  assert not any(isinstance(l, layers.CompressedLayer) for l in model.layers)


def test_compress_sequential_protects_logits_and_warns_on_unsupported():
  model = keras.Sequential([
      keras.Input((5, 4)),
      keras.layers.LSTM(6, return_sequences=True),
      keras.layers.Conv1D(8, 3, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
      keras.layers.Activation("softmax"),
  ])
  with pytest.warns(UserWarning, match="lstm"):
    cm = sc.compress(model, min_channels=2)
  conv, logits = [l for l in cm.layers if isinstance(l, layers.CompressedLayer)]
  assert conv.compressor.min_channels == 2
  assert logits.compressor.min_channels == 3  # the task's classes
  x = np.random.default_rng(0).normal(size=(4, 5, 4)).astype("float32")
  np.testing.assert_allclose(cm(x), model(x), atol=0.02)
  report = sc.size(cm)
  lstm = [l for l in report.layers if l.kind == "LSTM"][0]
  assert lstm.bits == 32 * model.layers[0].count_params()


def test_compress_rejects_bad_input():
  with pytest.raises(ValueError, match="already self-compressing"):
    sc.compress(sc.compress(_functional()))
  with pytest.raises(ValueError, match="not in the model"):
    sc.compress(_functional(), per_layer={"nope": None})
  unbuilt = keras.Sequential([keras.layers.Dense(3)])
  with pytest.raises(ValueError, match="input shape"):
    sc.compress(unbuilt)
  only_plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="no self-compressing layers"):
    sc.compress(only_plain, per_layer={only_plain.layers[0].name: None})


def test_fit_shrinks_model_at_least_4x_and_stays_accurate(tmp_path):
  x, y = _blobs()
  model = keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(128, activation="relu"),
      keras.layers.Dense(128, activation="relu"), keras.layers.Dense(8)])
  cm = sc.compress(model, gamma=0.2)
  cm.compile(keras.optimizers.Adam(2e-3),
             keras.losses.SparseCategoricalCrossentropy(from_logits=True),
             metrics=["accuracy"])
  start = sc.size(cm)
  history = cm.fit(x[:2500], y[:2500], epochs=12, batch_size=64, verbose=0)
  end = sc.size(cm)
  for key in ("size_kb", "bits_per_weight", "compression_ratio",
              "alive_channels"):
    assert key in history.history
  assert history.history["size_kb"][-1] == pytest.approx(end.kb, rel=1e-4)
  assert end.bits * 4 <= start.bits, (start.kb, end.kb)
  acc = cm.evaluate(x[2500:], y[2500:], verbose=0, return_dict=True)
  assert acc["accuracy"] > 0.8  # chance is 0.125
  # Saved and loaded, the trained model computes the same thing.
  cm.save(tmp_path / "m.keras")
  loaded = keras.models.load_model(tmp_path / "m.keras")
  np.testing.assert_array_equal(loaded(x[:64]), cm(x[:64]))
  # predict() runs XLA-compiled: equal up to float rounding.
  np.testing.assert_allclose(loaded.predict(x[:64], verbose=0),
                             cm.predict(x[:64], verbose=0), atol=1e-5)
  assert sc.size(loaded) == end


def test_auto_xla_trains_compiled_and_evaluates_uncompiled_on_cpu(
    monkeypatch):
  import tensorflow as tf
  from keras.src.backend.tensorflow import trainer as tf_trainer
  if tf.config.list_logical_devices("GPU"):
    pytest.skip("the rule is for CPUs")
  made = []  # (step, jit_compile) of each step function Keras builds
  make = tf_trainer.TensorFlowTrainer._make_function

  def spy(self, step_function):
    made.append((step_function.__name__, self.jit_compile))
    return make(self, step_function)

  monkeypatch.setattr(tf_trainer.TensorFlowTrainer, "_make_function", spy)
  x, y = _blobs(n=256)
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
  cm = sc.compress(model, gamma=0.01)
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  cm.compile("adam", loss, metrics=["accuracy"])  # jit_compile="auto"
  cm.fit(x, y, validation_data=(x, y), epochs=1, batch_size=64, verbose=0)
  assert made == [("train_step", True), ("test_step", False)]
  assert cm.jit_compile is True
  # Evaluation without XLA computes what it computes with it.
  uncompiled = cm.evaluate(x, y, verbose=0, return_dict=True)
  made.clear()
  cm.compile("adam", loss, metrics=["accuracy"], jit_compile=True)
  compiled = cm.evaluate(x, y, verbose=0, return_dict=True)
  assert made == [("test_step", True)]  # asked for: XLA everywhere
  assert compiled["accuracy"] == uncompiled["accuracy"]
  np.testing.assert_allclose(compiled["loss"], uncompiled["loss"], rtol=1e-5)


def test_target_kb_adapts_gamma_to_land_on_budget():
  x, y = _blobs()
  model = keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(8)])
  cm = sc.compress(model, gamma=0.01, target_kb=1.0, target_rate=0.02)
  cm.compile(keras.optimizers.Adam(2e-3),
             keras.losses.SparseCategoricalCrossentropy(from_logits=True),
             metrics=["accuracy"])
  start_kb = sc.size(cm).kb
  history = cm.fit(x, y, epochs=10, batch_size=64, verbose=0)
  end_kb = sc.size(cm).kb
  assert start_kb > 2.0
  assert history.history["size_gamma"][-1] > 0.01
  # Within the budget, not just near it: `WithinBudget` restores the latest
  # epoch end under it if the last step left the model over.
  assert 0.85 <= end_kb <= 1.0, end_kb
  assert history.history["accuracy"][-1] > 0.8


def _set_bits(model, bits):
  for layer in model.layers:
    if hasattr(layer, "compressor"):
      p = layer.compressor.params
      p.assign(np.concatenate([np.full_like(np.asarray(p)[:, :1], bits),
                               np.asarray(p)[:, 1:]], axis=1))


def _budgeted_at(bits):
  """A budgeted model at `bits`, with its weights and size there."""
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64),
                            keras.layers.Dense(8)])
  cm = sc.compress(model, target_kb=1.0)
  _set_bits(cm, bits)
  return cm, cm.get_weights(), sc.size(cm).kb


def test_within_budget_restores_latest_epoch_end_under_budget(capsys):
  cm, small, small_kb = _budgeted_at(2.0)
  _set_bits(cm, 3.0)
  middle, middle_kb = cm.get_weights(), sc.size(cm).kb
  _set_bits(cm, 8.0)
  big_kb = sc.size(cm).kb
  assert small_kb < middle_kb < big_kb
  cm.target_kb = (middle_kb + big_kb) / 2  # the first two fit, the last not
  cb = sc.callbacks.WithinBudget()
  cb.set_model(cm)
  cb.on_train_begin()
  for epoch, (weights, kb) in enumerate([(small, small_kb), (middle, middle_kb),
                                         (cm.get_weights(), big_kb)]):
    cm.set_weights(weights)
    cb.on_epoch_end(epoch, {"size_kb": kb})
  cb.on_train_end()
  assert cb.restored_epoch == 2  # the latest within budget, not the smallest
  assert sc.size(cm).kb == middle_kb <= cm.target_kb
  for got, want in zip(cm.get_weights(), middle):
    np.testing.assert_array_equal(got, want)
  assert "restored the weights of epoch 2" in capsys.readouterr().out

  # Ending within the budget changes nothing.
  cb.on_train_begin()
  cb.on_epoch_end(0, {"size_kb": small_kb})
  cb.on_train_end()
  assert cb.restored_epoch is None
  assert sc.size(cm).kb == middle_kb

  # No epoch end within the budget: the weights stay, with a warning.
  cm.target_kb = small_kb / 2
  cb.on_train_begin()
  cb.on_epoch_end(0, {"size_kb": middle_kb})
  with pytest.warns(UserWarning, match="no epoch of this training"):
    cb.on_train_end()
  assert cb.restored_epoch is None and sc.size(cm).kb == middle_kb


def test_within_budget_carries_its_weights_across_segments():
  cm, small, small_kb = _budgeted_at(2.0)
  _set_bits(cm, 8.0)
  cm.target_kb = (small_kb + sc.size(cm).kb) / 2
  cb = sc.WithinBudget(print_fn=None)
  cb.final = False  # as fit_and_shed sets it for its segments
  cb.set_model(cm)
  cb.on_train_begin()
  cm.set_weights(small)
  cb.on_epoch_end(0, {"size_kb": small_kb})
  cb.on_train_end()  # a segment's end: no landing yet
  _set_bits(cm, 8.0)
  cb.on_train_begin()  # the next segment, same model: the weights carry
  cb.on_epoch_end(1, {"size_kb": sc.size(cm).kb})
  cb.on_train_end()
  assert sc.size(cm).kb > cm.target_kb
  cb.final = True
  cb.land()
  assert cb.restored_epoch == 1 and sc.size(cm).kb == small_kb
  # A segment on another model (a shed one) starts afresh.
  other = sc.compress(keras.Sequential([keras.Input((16,)),
                                        keras.layers.Dense(8)]), target_kb=1.0)
  cb.final = False
  cb.set_model(other)
  cb.on_train_begin()
  assert cb._kept == []


def test_within_budget_lands_on_an_epoch_from_before_a_resume(tmp_path):
  cm, small, small_kb = _budgeted_at(2.0)
  _set_bits(cm, 8.0)
  big, big_kb = cm.get_weights(), sc.size(cm).kb
  cm.target_kb = (small_kb + big_kb) / 2
  first = sc.WithinBudget(print_fn=None, directory=tmp_path)
  first.set_model(cm)
  first.on_train_begin()
  first.on_epoch_begin(0)
  cm.set_weights(small)
  first.on_epoch_end(0, {"size_kb": small_kb})  # within: written
  # The process dies here; a new one resumes at epoch 1 and ends over.
  resumed = sc.WithinBudget(print_fn=None, directory=tmp_path)
  resumed.set_model(cm)
  resumed.on_train_begin()
  resumed.on_epoch_begin(1)
  cm.set_weights(big)
  resumed.on_epoch_end(1, {"size_kb": big_kb})
  resumed.on_train_end()
  assert resumed.restored_epoch == 1 and sc.size(cm).kb == small_kb
  for got, want in zip(cm.get_weights(), small):
    np.testing.assert_array_equal(got, want)
  # Weights of the resumed epoch itself or later (written before the
  # process died, but not checkpointed) are not from before the resume.
  cm.set_weights(big)
  again = sc.WithinBudget(print_fn=None, directory=tmp_path)
  again.set_model(cm)
  again.on_train_begin()
  again.on_epoch_begin(0)
  assert again._kept == []
  # Nor are another model's (a shed one's).
  other = sc.compress(keras.Sequential([keras.Input((16,)),
                                        keras.layers.Dense(8)]), target_kb=1.0)
  again.set_model(other)
  again.on_train_begin()
  again.on_epoch_begin(5)
  assert again._kept == []


def test_fit_and_shed_lands_once_at_the_end():
  import tensorflow as tf
  x, y = _blobs(n=256)
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32),
                            keras.layers.Dense(8)])
  cm = sc.compress(model, target_kb=0.1)
  cm.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
  cm.target_rate = 1e-9  # gamma stays put: the budget stays out of reach
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sc.fit_and_shed(cm, tf.data.Dataset.from_tensor_slices((x, y)).batch(64),
                    epochs=3, shed_every_epochs=1, min_reduction=0.99,
                    verbose=0)
  over = [w for w in caught if "no epoch of this training" in str(w.message)]
  assert len(over) == 1, [str(w.message) for w in caught]


def test_fit_attaches_within_budget_only_with_a_target(monkeypatch):
  x, y = _blobs(n=256)
  began = []
  original = sc.callbacks.WithinBudget.on_train_begin

  def on_train_begin(self, logs=None):
    began.append(self.model.target_kb)
    original(self, logs)

  monkeypatch.setattr(sc.callbacks.WithinBudget, "on_train_begin",
                      on_train_begin)
  for target in (None, 50.0):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    cm = sc.compress(model, target_kb=target)
    cm.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    cm.fit(x, y, epochs=1, batch_size=64, verbose=0)
  assert began == [50.0]

def test_nan_loss_stops_with_clear_error():
  x, y = _blobs(n=256)
  x[100] = np.nan
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
  cm = sc.compress(model)
  cm.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
  with pytest.raises(sc.TrainingDivergedError, match="learning rate"):
    cm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)


def test_layer_about_to_lose_every_channel_is_held_and_reported():
  x, y = _blobs(n=512)
  model = keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
      keras.layers.Dense(8)])
  cm = sc.compress(model, gamma=50.0, min_channels=1, lr_multiplier=500)
  cm.compile(keras.optimizers.Adam(1e-2),
             keras.losses.SparseCategoricalCrossentropy(True))
  with pytest.warns(UserWarning, match="held at its minimum of 1"):
    cm.fit(x, y, epochs=3, batch_size=32, verbose=0)
  hidden = cm.layers[1]
  assert int(np.asarray(hidden.compressor.alive()).sum()) >= 1
  logs = cm.evaluate(x, y, verbose=0, return_dict=True)
  assert math.isfinite(logs["loss"]) and logs["alive_channels"] >= 1 + 8
