"""A workdir is bound to the config that created it, and held by one process.

`tools/train.py`, `tools/imp.py` and `tools/sweep.py` keep everything a run
produces in its workdir, and a user trusts that folder to say what was run.
Two guarantees keep that true:

* **Bound to its config.** The first run records `config.json`. A later run
  in the same workdir compares its config with the record, field by field,
  before it writes anything: identical (up to the fields in `FREE_FIELDS`,
  which say where the data is or how much is printed, not what is computed)
  resumes an interrupted run or reports a finished one; any other difference
  stops with a `WorkdirError` that lists each field (old -> new) and the way
  out. The only change allowed is growing `epochs` of a run with a constant
  learning rate, and only when asked for (`extend_epochs=True`,
  `--extend_epochs`): the run then continues from its last epoch.
* **One process at a time.** `Lock` takes an OS file lock on
  `workdir/.lock` (`fcntl.flock`; `msvcrt.locking` on Windows). The OS
  releases it when the holder exits in any way, `kill -9` included, so no
  stale lock is ever left; a second process gets a `WorkdirError` naming the
  holder's PID.
"""

import json
import os

from selfcompress import checkpoint
from selfcompress.errors import WorkdirError

CONFIG = "config.json"
LOCK = ".lock"
# Fields that say where things are or how much is printed: a resumed run may
# change them without changing its results.
FREE_FIELDS = frozenset({
    "verbose", "data_dir", "download", "verify_checksums",
    "checkpoint_every_epochs", "tpu_address"})


def flat(config):
  """`{"a.b": value}` for every leaf of a ConfigDict, as JSON records it."""
  def walk(d, prefix):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict) and v:
        out.update(walk(v, f"{prefix}{k}."))
      else:
        out[prefix + k] = v
    return out
  if not isinstance(config, dict):
    config = json.loads(config.to_json_best_effort())
  return walk(config, "")


def recorded(workdir):
  """The flat config recorded in `workdir`, or None for a new workdir."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return flat(json.load(f))
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f"{path} cannot be read ({e}), so what this workdir holds is unknown. "
        "Use a new --workdir (or delete this one to start over).") from e


def differences(before, now, free=FREE_FIELDS):
  """`[(field, old, new)]` for every field that differs, `free` ones aside.

  A field the record lacks but that now holds its default is no
  difference: the record predates the field, and the run it describes
  behaved as the default does (a workdir written before a new config field
  resumes).
  """
  from selfcompress import config as config_lib
  defaults = flat(config_lib.base())
  missing = object()
  out = []
  for key in sorted(set(before) | set(now)):
    old, new = before.get(key, missing), now.get(key, missing)
    if key in free or old == new:
      continue
    if old is missing and key in defaults and new == defaults[key]:
      continue
    out.append((key, "(absent)" if old is missing else old,
                "(absent)" if new is missing else new))
  return out


def check(workdir, config, *, what="a run", extend_epochs=False,
          free=FREE_FIELDS, growable=()):
  """Compares `config` with the one `workdir` records; writes nothing.

  Returns the recorded flat config (None for a new workdir). Raises
  `WorkdirError` listing each differing field unless the differences are
  allowed: `epochs` growing with `extend_epochs` (constant learning rate
  only), or a field in `growable` growing.
  """
  before = recorded(workdir)
  if before is None:
    return None
  now = flat(config)
  diffs = differences(before, now, free)
  blocking = []
  for field, old, new in diffs:
    grows = (isinstance(old, (int, float)) and isinstance(new, (int, float))
             and new > old)
    if field in growable and grows:
      continue
    if field == "epochs" and extend_epochs and grows:
      if now.get("lr_schedule") != "constant":
        raise WorkdirError(
            f"{workdir} holds {what} with a {now.get('lr_schedule')} "
            f"learning-rate schedule that ends at epoch {old}: it cannot be "
            "extended (the schedule is fixed by the run's length). Start a "
            "new --workdir with the longer epochs.")
      continue
    blocking.append((field, old, new))
  if blocking:
    rows = "\n".join(f"  {f}: {old!r} -> {new!r}" for f, old, new in blocking)
    ways = ("use a new --workdir for the new config, or rerun with the "
            "recorded values")
    if [f for f, _, _ in blocking] == ["epochs"] and not extend_epochs:
      ways = ("rerun with --extend_epochs to continue it to the new epochs "
              "(constant learning rate only), use a new --workdir, or rerun "
              "with the recorded value")
    raise WorkdirError(
        f"{workdir} holds {what} made with a different config; nothing was "
        f"changed. Differences (recorded -> given):\n{rows}\n"
        f"To go on: {ways}.")
  return before


def record(workdir, config):
  """Writes `config.json` (call once the config is known good)."""
  checkpoint.write_text(os.path.join(workdir, CONFIG),
                        config.to_json_best_effort(indent=2) + "\n")


class Lock:
  """An exclusive OS lock on `workdir/.lock`, held until `release()` or the
  process's end (`kill -9` included). Use as a context manager."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK)
    self._file = None

  def acquire(self):
    try:
      os.makedirs(self.workdir, exist_ok=True)
      f = open(self.path, "a+")  # never truncates another holder's PID
    except OSError as e:
      raise WorkdirError(
          f"--workdir={self.workdir} cannot be used: {e.strerror or e} "
          f"({e.filename or self.workdir}). Give a folder that can be "
          "created and written.") from e
    try:
      _lock(f)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise WorkdirError(
          f"{self.workdir} is in use by another process (PID {holder}). "
          "Wait for it to finish (or stop it), or use another --workdir.")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    self._file = f
    return self

  def release(self):
    if self._file is not None:
      self._file.close()  # closing the file releases the OS lock
      self._file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _lock(f):
  try:
    import fcntl
  except ImportError:  # Windows
    import msvcrt
    f.seek(0)
    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    return
  fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
