"""Figures: the training curve of one run, the accuracy-vs-size Pareto plots
and IMP's accuracy against weights remaining."""

import statistics

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from selfcompress import checkpoint  # noqa: E402


def training_curve(history, path, title=""):
  """Accuracy (train/validation) and size in KB per epoch, one PNG."""
  epochs = [r["epoch"] for r in history]
  fig, acc_ax = plt.subplots(figsize=(7, 4))
  for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
    if any(key in r for r in history):
      acc_ax.plot(epochs, [100 * r.get(key, float("nan")) for r in history],
                  style, color="tab:blue", label=key.replace("_", " "))
  acc_ax.set_xlabel("epoch")
  acc_ax.set_ylabel("accuracy (%)", color="tab:blue")
  if any("size_kb" in r for r in history):
    size_ax = acc_ax.twinx()
    size_ax.plot(epochs, [r.get("size_kb", float("nan")) for r in history],
                 color="tab:red", label="size")
    size_ax.set_ylabel("size (KB)", color="tab:red")
    size_ax.set_yscale("log")
  acc_ax.legend(loc="lower left")
  acc_ax.set_title(title)
  fig.tight_layout()
  _save(fig, path)


def pareto(points, path, dense=None, anchors=(), title=""):
  """Test accuracy against size (log scale).

  Args:
    points: dicts with `size_kb`, `accuracy` and a `label` (e.g. gamma).
    dense: optional dict for the dense float32 model.
    anchors: published results, `(label, size_kb, accuracy)` triples.
  """
  fig, ax = plt.subplots(figsize=(9.5, 4.5))
  pts = sorted(points, key=lambda p: p["size_kb"])
  ax.plot([p["size_kb"] for p in pts], [100 * p["accuracy"] for p in pts],
          "o-", color="tab:blue", label="selfcompress")
  for p in pts:
    ax.annotate(p["label"], (p["size_kb"], 100 * p["accuracy"]), fontsize=7,
                textcoords="offset points", xytext=(3, -10))
  if dense:
    ax.plot([dense["size_kb"]], [100 * dense["accuracy"]], "s",
            color="black", label="dense float32")
  _finish_size_plot(fig, ax, anchors, path, title)


def methods(groups, path, budget_kb=None, published=(), title=""):
  """Test accuracy against size (log scale) for several methods: each run
  a small dot, each method's mean over runs a large marker with the runs'
  standard deviation as error bars; published results as stars.

  Args:
    groups: dict `method -> list of rows` with `size_kb` and
      `test_accuracy` (a fraction).
    budget_kb: drawn as a vertical line.
    published: `(label, size_kb, accuracy)` triples.
  """
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for label, rows in groups.items():
    if not rows:
      continue
    sizes = [r["size_kb"] for r in rows]
    accs = [100 * r["test_accuracy"] for r in rows]
    dots, = ax.plot(sizes, accs, ".", alpha=0.4)
    spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    ax.errorbar([statistics.fmean(sizes)], [statistics.fmean(accs)],
                xerr=[spread(sizes)], yerr=[spread(accs)], fmt="o",
                color=dots.get_color(), capsize=3,
                label=f"{label} (n={len(rows)})")
  if budget_kb:
    ax.axvline(budget_kb, color="gray", ls="--", lw=1, label="budget")
  _finish_size_plot(fig, ax, published, path, title)


def _finish_size_plot(fig, ax, published, path, title):
  """Published `(label, size_kb, accuracy)` points as stars, the log size
  axis, labels and legend; saves the figure to `path`."""
  for label, size_kb, accuracy in published:
    ax.plot([size_kb], [100 * accuracy], "*", markersize=11,
            label=f"{label} ({size_kb:g} KB, {100 * accuracy:.1f}%)")
  ax.set_xscale("log")
  ax.set_xlabel("size (KB, 1 KB = 1000 bytes)")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(True, which="both", alpha=0.3)
  # Beside the axes: inside, it hides the points of the lower right.
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_title(title)
  fig.tight_layout()
  _save(fig, path)


def imp_curves(groups, path, title="", references=()):
  """Test accuracy against weights remaining (log scale), one line per
  group (its mean over runs) with the runs' range shaded.

  Args:
    groups: dict `label -> list of runs`; a run is a list of dicts with
      `density` and `accuracy` (fractions), one per level.
    references: `(label, accuracy)` pairs drawn as horizontal lines (e.g. a
      longer-trained dense network).
  """
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, runs in groups.items():
    by_density = {}
    for run in runs:
      for r in run:
        by_density.setdefault(round(r["density"], 6), []).append(r["accuracy"])
    x = sorted(by_density, reverse=True)
    ys = [by_density[d] for d in x]
    mean = [100 * sum(y) / len(y) for y in ys]
    line, = ax.plot([100 * d for d in x], mean, "o-", ms=3,
                    label=f"{label} (n={len(runs)})")
    ax.fill_between([100 * d for d in x], [100 * min(y) for y in ys],
                    [100 * max(y) for y in ys], color=line.get_color(),
                    alpha=0.2)
  for label, accuracy in references:
    ax.axhline(100 * accuracy, color="gray", ls="--", lw=1, label=label)
  ax.set_xscale("log")
  lowest = min(ax.get_xlim())
  ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5) if t >= lowest]
  ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
  ax.invert_xaxis()
  ax.set_xlabel("weights remaining (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path):
  checkpoint.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
  plt.close(fig)
