"""Every compression method side by side on one budget (the harness of
`tools/bench_methods.py`).

Same model, data, seeds and size rule for all; the test set is read once
per reported point and never chooses anything. Methods:

  sc:<name>    a self-compression run of the self-compression config with
               `target_kb` = the budget and the variant's settings
               (`SC_VARIANTS`).
  imp:<reset>  an IMP run of the IMP config with that reset (`imp.RESETS`).
               Every level, stored at float32 or quantized to 2-8 uniform
               bits (`pruning.quantize_uniform`), is a candidate: the one
               with the best validation accuracy among those within the
               budget (`pruning.sparse_size`, indices included) is reported;
               if none is, the best among those within `FLOOR_SLACK` of its
               smallest, flagged as over budget.
               Its time is the training time of the levels up to it.
  gmp          gradual magnitude pruning (Zhu & Gupta 2018; the algorithm of
               TensorFlow Model Optimization's `prune_low_magnitude`) in one
               dense run of the self-compression config (the output layer
               at the IMP config's `imp.output_rate`), sized for the budget
               at 4-bit values; its float32 and 2-8-bit points are
               candidates as IMP's levels are.
  dense_final  the architecture a self-compression run ended with (its
               shed network as plain Keras layers, `--final_from`), trained
               from a fresh initialisation as an ordinary float model, then
               quantized to the fewest uniform bits that keep validation
               accuracy within 0.2 points (the lottery-ticket control for
               the structure self-compression found).

Same data for every method: the IMP config reads the self-compression
config's data settings (`DATA_FIELDS`: dataset, split and augmentation);
where they differed, the harness says so.

Each run has its own workdir under the root and resumes or is skipped like
any run of the tools, so an interrupted benchmark continues where it stopped.
"""

import copy
import json
import os
import statistics
import time

import keras
import numpy as np

import selfcompress as sc
from selfcompress import (checkpoint, data, imp, keras_export, models, plots,
                          pruning, training)
from selfcompress import config as config_lib
from selfcompress.pruning import gradual
from selfcompress.errors import ConfigError

# Self-compression variants: config fields set on top of the SC config.
SC_VARIANTS = {
    "bits": {"compressor": "bits", "storage": "fixed"},
    "bits_entropy": {"compressor": "bits", "storage": "entropy"},
    "gates_bits_entropy": {"compressor": "gates+bits", "storage": "entropy"},
    "inputs_bits_entropy": {"compressor": "inputs+bits", "storage": "entropy"},
    "sparse_bits_entropy": {"compressor": "sparse_bits", "storage": "entropy"},
}
# The config fields that make the data (what is read, how it is split,
# preprocessed and augmented): one setting for every method of a benchmark.
DATA_FIELDS = ("dataset", "data_dir", "download", "verify_checksums",
               "num_validation", "max_train_examples", "image_size",
               "color_mode", "tfrecord", "num_classes", "rescale",
               "standardize", "random_crop_padding", "random_flip",
               "drop_remainder")
TOLERANCE = 0.002  # dense_final's quantization: validation points it may lose
GMP_BITS = 4  # gmp: the value bits its final sparsity is sized for
FLOOR_SLACK = 1.25  # IMP over budget everywhere: sizes it may choose among

# Published results (accuracy, KB as each paper stores its model), by model.
PUBLISHED = {
    "lenet300": [
        # Han, Mao & Dally, "Deep Compression", ICLR 2016: pruning, trained
        # quantization and Huffman coding, relative indices.
        ("Deep Compression", 27.0, 0.9842),
        # Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network
        # Compression", ICLR 2017 (Han et al.'s storage format).
        ("Soft weight-sharing", 16.7, 0.9806),
        # Oktay, Balle, Singh & Shrivastava, "Scalable Model Compression by
        # Entropy Penalized Reparameterization", ICLR 2020.
        ("Oktay et al.", 8.56, 0.981),
    ],
    "lenet5": [
        ("Deep Compression", 44.0, 0.9926),
        ("Soft weight-sharing", 10.6, 0.9903),
        # Louizos, Ullrich & Welling, "Bayesian Compression for Deep
        # Learning", NeurIPS 2017 (group normal-Jeffreys prior).
        ("Bayesian Compression (GNJ)", 4.8, 0.990),
        # Louizos, Welling & Kingma, "Learning Sparse Neural Networks
        # through L0 Regularization", ICLR 2018: about 39k weights, float32.
        ("L0 (float32)", 156.0, 0.991),
        ("Oktay et al.", 2.84, 0.990),
    ],
}


def parse_method(name, final_from=None):
  """Validates a method name; returns `(kind, arg)`."""
  kind, _, arg = name.partition(":")
  if kind == "sc" and arg in SC_VARIANTS:
    return kind, arg
  if kind == "imp" and arg in imp.RESETS and arg not in ("reinit",):
    return kind, arg
  if name == "gmp":
    return "gmp", None
  if name == "dense_final":
    if final_from is None or parse_method(final_from)[0] != "sc":
      raise ConfigError("dense_final needs --final_from=sc:VARIANT, the "
                        "self-compression run whose architecture it trains.")
    return "dense_final", final_from
  raise ConfigError(
      f"Unknown method {name!r}; known: "
      + ", ".join([f"sc:{v}" for v in SC_VARIANTS]
                  + [f"imp:{r}" for r in imp.RESETS if r != "reinit"]
                  + ["gmp", "dense_final"]) + ".")


def _workdir(root, method, seed):
  return os.path.join(root, method.replace(":", "_"), f"seed_{seed}")


RESULTS = "results.json"  # a finished gmp or dense_final run's result


def _finished(workdir):
  """The result a finished run recorded in `workdir`, or None."""
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _seeded(config, seed, data_dir):
  c = copy.deepcopy(config)
  c.unlock()
  c.seed, c.verbose = seed, 0
  if data_dir is not None:
    c.data_dir = data_dir
  return c


def run_sc(config, variant, budget_kb, seed, root, data_dir=None):
  c = _seeded(config, seed, data_dir)
  c.method, c.target_kb = "selfcompress", budget_kb
  for field, value in SC_VARIANTS[variant].items():
    c[field] = value
  r = training.train_and_evaluate(c, _workdir(root, f"sc:{variant}", seed))
  return {"size_kb": r["size_kb"], "test_accuracy": r["test_accuracy"],
          "val_accuracy": r["val_accuracy"], "seconds": r["train_seconds"],
          "detail": f"{r['weights_alive']:,} weights alive"}


def run_imp(config, reset, budget_kb, seed, root, data_dir=None,
            bits=range(8, 1, -1)):
  c = _seeded(config, seed, data_dir)
  c.imp.reset = reset
  if reset == "rewind":
    c.imp.rewind_epoch = max(c.imp.rewind_epoch, 1)
  workdir = _workdir(root, f"imp:{reset}", seed)
  rows = imp.run(c, workdir)
  ds = data.from_config(c, first_epoch=0)
  candidates = []
  for row in rows:
    model = imp.load_level(c, ds, workdir, row["level"])
    candidates += _points(model, ds, budget_kb, bits, row["level"])
  (val, level, b, size), note = _choose(candidates, budget_kb)
  model = imp.load_level(c, ds, workdir, level)
  if b != 32:
    pruning.quantize_uniform(model, b)
  test = model.evaluate(ds.test, return_dict=True, verbose=0)["accuracy"]
  seconds = sum(r["train_seconds"] for r in rows[:level + 1])
  density = rows[level]["density"]
  return {"size_kb": size, "test_accuracy": test, "val_accuracy": val,
          "seconds": seconds,
          "detail": (f"level {level} ({100 * density:.2f}% of weights), "
                     f"{'float32' if b == 32 else f'{b} bits'}{note}")}


def _points(model, ds, budget_kb, bits, tag):
  """`model` stored at float32 and quantized to each of `bits`: per point
  `(within budget, validation accuracy, -size, tag, bits, size)`. Leaves
  the model's weights as they were."""
  weights, out = model.get_weights(), []
  for b in (32, *bits):
    model.set_weights(weights)
    if b != 32:
      pruning.quantize_uniform(model, b)
    size = pruning.sparse_size(model, value_bits=b).kb
    val = model.evaluate(ds.validation, return_dict=True, verbose=0)["accuracy"]
    out.append((size <= budget_kb, val, -size, tag, b, size))
  model.set_weights(weights)
  return out


def _choose(candidates, budget_kb):
  """The best validation point within the budget, or, if none is, the best
  within `FLOOR_SLACK` of the smallest: `((val, tag, bits, size), note)`."""
  floor = min(c_[5] for c_ in candidates)
  within = [c_ for c_ in candidates if c_[0]]
  if not within:  # the method cannot reach the budget: its best near its floor
    within = [c_ for c_ in candidates if c_[5] <= FLOOR_SLACK * floor]
  _, val, _, tag, b, size = max(within)
  note = ("" if size <= budget_kb else
          f"; over budget: its smallest point is {floor:.2f} KB, this the "
          f"best within {FLOOR_SLACK:g}x of it")
  return (val, tag, b, size), note


def _gmp_sparsity(model, budget_kb, bits, output_rate, seed):
  """The final sparsity at which `model`'s kernels, pruned uniformly at
  random (the last one at `output_rate` times it) and stored at `bits`,
  take `budget_kb` (bisection; magnitude masks index a little differently,
  so the trained model's size is measured, not assumed)."""
  shapes = pruning.kernel_shapes(model)
  rng = np.random.default_rng(seed)
  order = {p: rng.permutation(int(np.prod(s))) for p, s in shapes.items()}

  def size(sparsity):
    arrays = {}
    for i, (p, shape) in enumerate(shapes.items()):
      s_ = sparsity * (output_rate if i == len(shapes) - 1 else 1.0)
      keep = np.zeros(int(np.prod(shape)), np.float32)
      keep[order[p][:int(round((1.0 - s_) * keep.size))]] = 1.0
      arrays[p] = keep.reshape(shape)
    return pruning.sparse_size(model, bits, mask=pruning.Mask(arrays)).kb

  low, high = 0.0, 0.9999
  if size(high) > budget_kb:
    return high
  for _ in range(30):
    mid = (low + high) / 2
    low, high = (mid, high) if size(mid) > budget_kb else (low, mid)
  return high


def run_gmp(config, budget_kb, seed, root, data_dir=None, output_rate=1.0,
            bits=range(8, 1, -1)):
  """Gradual magnitude pruning (`pruning.gradual`, Zhu & Gupta 2018) in one
  dense training run of `config` (the self-compression config's model,
  optimizer, schedule and epochs): sparsity rises along the cubic schedule
  from the end of epoch 1 to 70% of the steps, to the sparsity at which the
  kernels fit the budget at `GMP_BITS` bits (the output layer at
  `output_rate` times it); the rest fine-tunes. Then its float32 and
  2-8-bit points are candidates, as IMP's levels are. Resumable through its
  `results.json`."""
  workdir = _workdir(root, "gmp", seed)
  finished = _finished(workdir)
  if finished is not None:
    return finished
  c = config_lib.dense(_seeded(config, seed, data_dir))
  ds = data.from_config(c, first_epoch=0)
  keras.utils.set_random_seed(seed)
  model = pruning.attach(models.get(c.model, ds.input_shape, ds.num_classes,
                                    **dict(c.model_kwargs)))
  sparsity = _gmp_sparsity(model, budget_kb, GMP_BITS, output_rate, seed)
  steps = ds.steps_per_epoch
  total = steps * c.epochs
  schedule = gradual.GradualPruning(
      sparsity, begin_step=min(steps, total // 2), end_step=int(0.7 * total),
      frequency=max(1, min(100, total // 100)), output_rate=output_rate)
  training.compile_model(model, training.learning_rate(c, steps), c)
  start = time.perf_counter()
  model.fit(ds.train, epochs=c.epochs, steps_per_epoch=steps, shuffle=False,
            verbose=0, callbacks=[schedule])
  seconds = time.perf_counter() - start
  (val, _, b, size), note = _choose(
      _points(model, ds, budget_kb, bits, 0), budget_kb)
  if b != 32:
    pruning.quantize_uniform(model, b)
  test = model.evaluate(ds.test, return_dict=True, verbose=0)["accuracy"]
  kept = pruning.mask_of(model)
  result = {"size_kb": size, "test_accuracy": test, "val_accuracy": val,
            "seconds": seconds,
            "detail": (f"sparsity {100 * kept.sparsity:.2f}%, "
                       f"{'float32' if b == 32 else f'{b} bits'}{note}")}
  checkpoint.write_json(os.path.join(workdir, RESULTS), result)
  return result


def run_dense_final(sc_config, sc_method, seed, root, data_dir=None):
  """Trains the architecture `sc_method`'s run (same seed) ended with, from
  scratch, as a float model; resumable through its `results.json`."""
  workdir = _workdir(root, "dense_final", seed)
  finished = _finished(workdir)
  if finished is not None:
    return finished
  c = _seeded(sc_config, seed, data_dir)
  source = os.path.join(_workdir(root, sc_method, seed), "model.keras")
  if not os.path.exists(source):
    raise ConfigError(f"dense_final: {source} is missing; run {sc_method} for "
                      f"seed {seed} first (list it before dense_final).")
  ds = data.from_config(c, first_epoch=0)
  shed = sc.shed(sc.load_model(source, compile=False))
  twin, _ = keras_export.keras_model(shed, quantize=False)
  keras.utils.set_random_seed(seed)
  model = keras.models.clone_model(twin)  # same layers, fresh weights
  pruning.attach(model)  # for the size rule IMP's points use
  steps = ds.steps_per_epoch
  training.compile_model(model, training.learning_rate(c, steps), c)
  start = time.perf_counter()
  model.fit(ds.train, epochs=c.epochs, steps_per_epoch=steps, shuffle=False,
            verbose=0)
  seconds = time.perf_counter() - start
  bits, val = imp.tolerated_bits(model, ds.validation, TOLERANCE)
  test = model.evaluate(ds.test, return_dict=True, verbose=0)["accuracy"]
  size = pruning.sparse_size(model, value_bits=bits)
  result = {"size_kb": size.kb, "test_accuracy": test, "val_accuracy": val,
            "seconds": seconds,
            "detail": f"{size.weights_kept:,} weights, {bits} bits"}
  checkpoint.write_json(os.path.join(workdir, RESULTS), result)
  return result


def same_data(config, source, print_fn=print):
  """A copy of `config` with `source`'s data settings (`DATA_FIELDS`)."""
  c = copy.deepcopy(config)
  c.unlock()
  changed = []
  for field in DATA_FIELDS:
    theirs, ours = source[field], c[field]
    if hasattr(theirs, "to_dict"):
      theirs, ours = theirs.to_dict(), ours.to_dict()
    if theirs != ours:
      changed.append(f"{field}={theirs!r} (was {ours!r})")
      c[field] = copy.deepcopy(source[field])
  if changed:
    print_fn("Same data for every method: the IMP config takes the "
             "self-compression config's " + ", ".join(changed) + ".")
  return c


def run(methods, seeds, budget_kb, root, *, sc_config, imp_config,
        final_from=None, data_dir=None, print_fn=print):
  """Runs every method for every seed (seed by seed, so a slow machine
  spreads its noise over all methods); returns the rows and writes
  `root/results.json`, `root/results.md` and `root/pareto.png`."""
  kinds = [parse_method(m, final_from) for m in methods]
  if "dense_final" in methods and final_from not in methods[
      :methods.index("dense_final")]:
    raise ConfigError(f"--final_from={final_from} must be one of the methods "
                      "listed before dense_final.")
  imp_config = same_data(imp_config, sc_config, print_fn)
  rows = []
  for seed in seeds:
    for method, (kind, arg) in zip(methods, kinds):
      if kind == "sc":
        r = run_sc(sc_config, arg, budget_kb, seed, root, data_dir)
      elif kind == "imp":
        r = run_imp(imp_config, arg, budget_kb, seed, root, data_dir)
      elif kind == "gmp":
        r = run_gmp(sc_config, budget_kb, seed, root, data_dir,
                    output_rate=imp_config.imp.output_rate)
      else:
        r = run_dense_final(sc_config, arg, seed, root, data_dir)
      rows.append({"method": method, "seed": seed, **r})
      print_fn(f"seed {seed} {method:24s} test {100 * r['test_accuracy']:.2f}%"
               f" at {r['size_kb']:.3f} KB in {r['seconds']:.0f} s "
               f"({r['detail']})")
  checkpoint.write_json(os.path.join(root, "results.json"), rows)
  table = summary(rows, methods, budget_kb)
  checkpoint.write_text(os.path.join(root, "results.md"), table + "\n")
  print_fn(table)
  model = sc_config.model
  plots.methods(
      {m: [r for r in rows if r["method"] == m] for m in methods},
      os.path.join(root, "pareto.png"), budget_kb=budget_kb,
      published=PUBLISHED.get(model, ()),
      title=f"{model} on {sc_config.dataset}, {len(seeds)} seed(s)")
  return rows


def _spread(values, scale=1.0, digits=2):
  mean = statistics.fmean(values) * scale
  if len(values) < 2:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def summary(rows, methods, budget_kb):
  """A Markdown table: per method the mean ± standard deviation over seeds
  of test accuracy, size and training time, and the time against the
  first IMP method's."""
  reference = next((m for m in methods if m.startswith("imp:")), None)
  imp_seconds = statistics.fmean(
      [r["seconds"] for r in rows if r["method"] == reference]
  ) if reference else None
  lines = [f"Budget {budget_kb:g} KB; mean ± standard deviation over seeds.",
           "", "| method | seeds | test accuracy (%) | size (KB) | train s "
           f"| time / {reference or 'IMP'} |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for m in methods:
    rs = [r for r in rows if r["method"] == m]
    seconds = [r["seconds"] for r in rs]
    ratio = (f"{statistics.fmean(seconds) / imp_seconds:.2f}"
             if imp_seconds else "")
    lines.append(
        f"| {m} | {len(rs)} | {_spread([r['test_accuracy'] for r in rs], 100)}"
        f" | {_spread([r['size_kb'] for r in rs], digits=3)} | "
        f"{_spread(seconds, digits=0)} | {ratio} |")
  return "\n".join(lines)
