"""Atomic files and resumable checkpoints.

Everything is written to a temporary file in the destination folder and then
renamed over the target (`os.replace` is atomic on POSIX), so a run killed at
any moment leaves either the old file or the new one, never half of one.

A checkpoint is a full `.keras` file (weights, compression state, optimizer
moments and step) named by epoch, plus `state.json`, which names the newest
complete checkpoint and carries the metrics history. `state.json` is replaced
only after its checkpoint is complete, and older checkpoints are deleted only
after that.
"""

import json
import os
import tempfile
import warnings

import keras

from selfcompress.errors import WorkdirError

STATE = "state.json"
# The process's umask (read once: reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, write):
  """Calls `write(tmp_path)`, then renames `tmp_path` to `path`."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  try:
    write(tmp)
    # mkstemp makes the file private (0600); give it the permissions any
    # other new file gets (0644 under the usual umask).
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path, text):
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  atomic_write(path, write)


def write_json(path, obj, sort_keys=True):
  write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys,
                              default=float) + "\n")


def save(directory, model, epoch, history):
  """Saves `model` after `epoch` (1-based count of finished epochs)."""
  name = f"epoch-{epoch:05d}.keras"
  atomic_write(os.path.join(directory, name), model.save)
  write_json(os.path.join(directory, STATE),
             {"epoch": epoch, "checkpoint": name, "history": history},
             sort_keys=False)
  for old in os.listdir(directory):
    if old.endswith(".keras") and old != name:
      os.remove(os.path.join(directory, old))


def restore(directory):
  """Returns `(model, epoch, history)` of the newest checkpoint, or None."""
  path = os.path.join(directory, STATE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      state = json.load(f)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      model = keras.models.load_model(
          os.path.join(directory, state["checkpoint"]))
  except (OSError, ValueError, KeyError) as e:
    raise WorkdirError(
        f"The checkpoint in {directory} cannot be read ({e}). Delete that "
        "folder to start over, or point --workdir elsewhere.") from e
  for w in caught:
    if "Skipping variable loading for optimizer" in str(w.message):
      # Keras would go on with fresh moments and step 0 (so a restarted
      # learning-rate schedule): not a resumed run.
      raise WorkdirError(
          f"The checkpoint in {directory} holds optimizer state of another "
          f"layout ({w.message}) Its weights load (sc.load_model(..., "
          "compile=False)), but training cannot resume from it: finish it "
          "with the selfcompress version that wrote it, or point --workdir "
          "elsewhere to start over.")
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  return model, state["epoch"], state["history"]


class Checkpoint(keras.callbacks.Callback):
  """Saves a resumable checkpoint every `every_epochs` and at the end."""

  def __init__(self, directory, history, total_epochs, every_epochs=1):
    super().__init__()
    self.directory = directory
    self.history = history
    self.total_epochs = total_epochs
    self.every_epochs = max(int(every_epochs), 1)

  def on_epoch_end(self, epoch, logs=None):
    done = epoch + 1
    if done % self.every_epochs == 0 or done == self.total_epochs:
      save(self.directory, self.model, done, self.history)
