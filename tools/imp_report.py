"""Accuracy vs weights remaining for finished IMP runs, as a Markdown table.

Reads each run's `level_NN/results.json` (see `selfcompress.imp`), groups
runs by label (one per reset mode, several seeds each) and prints, per level,
the test accuracy at the best-validation epoch for every run and the mean
per group, then the same at the end of training.

  python tools/imp_report.py \
      --runs=init:/tmp/imp_s0,init:/tmp/imp_s1,reinit:/tmp/reinit_s0 \
      --plot=/tmp/imp.png

`--plot` draws the accuracy at the best-validation epoch against weights
remaining, mean per label with the seeds' range shaded.
"""

import glob
import json
import os

from absl import app, flags

from selfcompress import plots

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "label:workdir pairs.")
flags.DEFINE_string("plot", None, "Optional PNG path for the curves.")
flags.DEFINE_string("title", "", "Plot title.")
flags.DEFINE_list("references", [], "Runs drawn as a horizontal line at the "
                  "mean best-validation test accuracy of their level 0, as "
                  "label:workdir pairs (e.g. a longer-trained dense run).")


def read(workdir):
  rows = {}
  for path in sorted(glob.glob(os.path.join(workdir, "level_*", "results.json"))):
    with open(path) as f:
      r = json.load(f)
    rows[r["level"]] = r
  return rows


def main(argv):
  del argv
  runs = []
  for item in FLAGS.runs:
    label, _, workdir = item.partition(":")
    if not workdir:
      raise app.UsageError(f"--runs takes label:workdir. Received: {item!r}")
    runs.append((label, os.path.basename(os.path.normpath(workdir)),
                 read(workdir)))
  labels = list(dict.fromkeys(label for label, _, _ in runs))
  levels = sorted(set().union(*(rows for _, _, rows in runs)))
  for key, title in (("test_accuracy_at_best_val", "at the best-validation epoch"),
                     ("test_accuracy", "at the end of training")):
    print(f"\nTest accuracy {title} (%):\n")
    print("| level | weights | " + " | ".join(n for _, n, _ in runs) + " | " +
          " | ".join(f"mean {l}" for l in labels) + " |")
    print("| ---: | ---: |" + " ---: |" * (len(runs) + len(labels)))
    for level in levels:
      density = next(rows[level]["density"] for _, _, rows in runs
                     if level in rows)
      cells = [f"{100 * rows[level][key]:.2f}" if level in rows else ""
               for _, _, rows in runs]
      for label in labels:
        values = [rows[level][key] for l, _, rows in runs
                  if l == label and level in rows]
        cells.append(f"{100 * sum(values) / len(values):.2f} (n={len(values)})"
                     if values else "")
      print(f"| {level} | {100 * density:.1f}% | " + " | ".join(cells) + " |")
  if FLAGS.plot:
    groups = {}
    for label, _, rows in runs:
      groups.setdefault(label, []).append(
          [{"density": r["density"], "accuracy": r["test_accuracy_at_best_val"]}
           for r in rows.values()])
    references = {}
    for item in FLAGS.references:
      label, _, workdir = item.partition(":")
      references.setdefault(label, []).append(
          read(workdir)[0]["test_accuracy_at_best_val"])
    plots.imp_curves(groups, FLAGS.plot, FLAGS.title, references=[
        (f"{label} (n={len(v)})", sum(v) / len(v))
        for label, v in references.items()])


if __name__ == "__main__":
  flags.mark_flag_as_required("runs")
  app.run(main)
