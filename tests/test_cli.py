"""The command-line tools as a user meets them: help, mistakes, output."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(REPO, "tools", "train.py")]
CONFIG = f"--config={REPO}/configs/default.py:smoke"


def run(*args, env=None):
  environ = {k: v for k, v in os.environ.items()
             if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
  return subprocess.run(TRAIN + list(args), capture_output=True, text=True,
                        timeout=300, env={**environ, **(env or {})})


def test_help_lists_flags_and_config_fields_and_exits_0():
  done = run("--help")
  assert done.returncode == 0, done.stderr
  for text in ("--workdir", "--[no]extend_epochs", "Config fields",
               "gamma ", "0.05", "weight of the size term",
               "compressor_per_layer", "imp.reset"):
    assert text in done.stdout, text


def test_user_mistakes_get_one_line_and_no_traceback(tmp_path):
  workdir = tmp_path / "run"
  cases = [
      (["--config.gama=1"], "--config.gama: the config has no field 'gama'. "
       "Did you mean --config.gamma?"),
      (["--config.max_train_examples=-5"],
       "max_train_examples=-5: must be an integer >= 0"),
      (["--config=configs/nope.py"], "cannot load the config file"),
      (["--config.compressor_per_layer.nope=gates"],
       "compressor_per_layer names ['nope'], which are not layers"),
  ]
  for extra, message in cases:
    args = [CONFIG, f"--workdir={workdir}", *extra]
    if extra[0].startswith("--config="):
      args = [f"--workdir={workdir}", *extra]
    done = run(*args)
    assert done.returncode == 1, (extra, done.stderr[-2000:])
    assert message in done.stderr, (extra, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, extra
    assert not workdir.exists(), f"{extra} left a workdir behind"


def test_per_layer_compressor_from_the_command_line_and_quiet_output(tmp_path):
  workdir = tmp_path / "run"
  done = run(CONFIG, f"--workdir={workdir}", "--config.epochs=1",
             "--config.compressor_per_layer.dense=gates")
  assert done.returncode == 0, done.stderr[-3000:]
  config = json.load(open(workdir / "config.json"))
  assert config["compressor_per_layer"] == {"dense": "gates"}
  layers = {l["name"]: l for l in json.load(open(workdir / "size.json"))["layers"]}
  assert layers["dense"]["mean_bits"] == 32.0  # gates keep float32 weights
  assert layers["dense_1"]["mean_bits"] < 32.0
  # One line per epoch, then the report; no TensorFlow start-up noise.
  assert done.stdout.count("epoch 1/1 |") == 1
  assert "\u2501" not in done.stdout  # no Keras progress bar glued to it
  assert "Test accuracy" in done.stdout
  for noise in ("cuInit", "oneDNN", "cuda drivers", "absl::InitializeLog"):
    assert noise not in done.stderr, done.stderr[-2000:]


@pytest.mark.slow  # minutes on 2 cores; -m slow runs it
def test_export_tool_calibrates_full_integer_on_the_workdirs_data(tmp_path):
  workdir = tmp_path / "run"
  done = run(CONFIG, f"--workdir={workdir}", "--config.epochs=2")
  assert done.returncode == 0, done.stderr[-3000:]
  export = [sys.executable, os.path.join(REPO, "tools", "export.py")]
  environ = {k: v for k, v in os.environ.items()
             if k != "TF_CPP_MIN_LOG_LEVEL"}
  out = tmp_path / "m.tflite"
  done = subprocess.run(
      export + [f"--workdir={workdir}", f"--output={out}", "--format=tflite",
                "--litert_compute=integer"],
      capture_output=True, text=True, timeout=300, env=environ)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "full integer" in done.stdout and "integer kernel" in done.stdout
  # The file's test accuracy next to the trained model's, on the
  # workdir's own test set.
  line = next(l for l in done.stdout.splitlines()
              if l.startswith("Test accuracy: this file"))
  file_acc, model_acc = [float(w.rstrip("%,")) for w in line.split()
                         if w.endswith("%") or w.endswith("%,")]
  results = json.load(open(workdir / "results.json"))
  assert abs(model_acc - 100 * results["test_accuracy"]) < 0.01, (line, results)
  assert abs(file_acc - model_acc) < 5, line
  for noise in ("fully_quantize", "XNNPACK", "cuInit"):
    assert noise not in done.stdout + done.stderr, noise
  # With a .keras file instead, the data must be given.
  done = subprocess.run(
      export + [f"--model={workdir}/model.keras", f"--output={out}",
                "--format=tflite", "--litert_compute=integer", "--overwrite"],
      capture_output=True, text=True, timeout=300, env=environ)
  assert done.returncode == 1 and "--representative_data" in done.stderr
  assert "Traceback" not in done.stderr
