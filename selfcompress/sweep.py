"""Gamma sweeps: the accuracy-vs-size curve of one config, with baselines."""

import copy
import os

from selfcompress import (checkpoint, compare, plots, training,
                          workdir as workdirs)
from selfcompress import config as base_config
from selfcompress.errors import ConfigError


def run_sweep(config, workdir, gammas, seeds=(0,), dense=True):
  """Trains `config` once per (gamma, seed), plus the dense float32 model.

  Each run has its own folder under `workdir` and resumes or is skipped like
  any `train_and_evaluate` run, so an interrupted sweep continues where it
  stopped. Writes `sweep.json` and `pareto.png` (test accuracy vs size, mean
  over seeds, with the dense model and published anchors marked).
  """
  if not gammas:
    raise ConfigError("Give at least one gamma to sweep (--gammas).")
  if config.target_kb is not None:
    # A budget would override every gamma (each run would land on it).
    print(f"A sweep varies gamma: the config's target_kb={config.target_kb:g} "
          "is not used.")
    config = copy.deepcopy(config)
    config.unlock()
    config.target_kb = None
  if tuple(config.metrics)[:1] != ("accuracy",):
    raise ConfigError(
        f"Bad config value: metrics={tuple(config.metrics)!r}: a sweep plots "
        "test accuracy against size, so its first metric must be "
        "'accuracy' (a classification loss).")
  with workdirs.Lock(workdir):  # each run also locks its own folder
    return _sweep(config, workdir, gammas, seeds, dense)


def _sweep(config, workdir, gammas, seeds, dense):
  runs = []
  jobs = [("selfcompress", g, s) for g in gammas for s in seeds]
  if dense:
    jobs += [("dense", None, s) for s in seeds]
  for i, (method, gamma, seed) in enumerate(jobs):
    c = copy.deepcopy(config)
    c.unlock()
    c.method, c.seed = method, seed
    if method == "dense":  # the compression's settings mean nothing to it
      base_config.dense(c)
    name = f"dense_seed{seed}" if method == "dense" else f"gamma{gamma:g}_seed{seed}"
    if gamma is not None:
      c.gamma = float(gamma)
    print(f"=== sweep run {i + 1}/{len(jobs)}: {name}", flush=True)
    result = training.train_and_evaluate(c, os.path.join(workdir, name))
    runs.append(dict(result, name=name))
  summary = summarize(runs)
  checkpoint.write_json(os.path.join(workdir, "sweep.json"),
                        {"runs": runs, "points": summary})
  points = [p for p in summary if p["method"] == "selfcompress"]
  dense_points = [p for p in summary if p["method"] == "dense"]
  plots.pareto(
      [dict(p, label=f"γ={p['gamma']:g}") for p in points],
      os.path.join(workdir, "pareto.png"),
      dense=dense_points[0] if dense_points else None,
      anchors=compare.PUBLISHED.get(config.model, ()),
      title=f"{config.model} on {config.dataset}: test accuracy vs size")
  for p in summary:
    print(format_point(p))
  return summary


def summarize(runs):
  """Mean and spread over seeds of each (method, gamma)."""
  groups = {}
  for r in runs:
    groups.setdefault((r["method"], r["gamma"] if r["method"] != "dense"
                       else None), []).append(r)
  points = []
  for (method, gamma), rs in groups.items():
    acc = [r["test_accuracy"] for r in rs]
    size = [r["size_kb"] for r in rs]
    points.append({
        "method": method, "gamma": gamma, "seeds": [r["seed"] for r in rs],
        "accuracy": sum(acc) / len(acc), "accuracy_min": min(acc),
        "accuracy_max": max(acc), "size_kb": sum(size) / len(size),
        "size_kb_min": min(size), "size_kb_max": max(size),
        "compression_ratio": sum(r["compression_ratio"] for r in rs) / len(rs),
        "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs),
    })
  return sorted(points, key=lambda p: -p["size_kb"])


def format_point(p):
  label = "dense float32" if p["method"] == "dense" else f"gamma {p['gamma']:g}"
  spread = (f" [{100 * p['accuracy_min']:.2f}, {100 * p['accuracy_max']:.2f}]"
            if len(p["seeds"]) > 1 else "")
  return (f"{label:>14}: {100 * p['accuracy']:.2f}%{spread} at "
          f"{p['size_kb']:.2f} KB ({p['compression_ratio']:.1f}x), "
          f"seeds {p['seeds']}")
