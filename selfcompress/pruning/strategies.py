"""Pruning strategies behind a plain registry (`STRATEGIES`, `get`).

A strategy takes the current weights (dict `path -> array`), the current
`Mask` and per-kernel fractions, and returns a new `Mask` that also removes
a fraction of the weights still kept. Already-pruned weights stay pruned.
"""

import numpy as np

from selfcompress.pruning.mask import Mask


def layer_fractions(paths, fraction, output_rate=1.0, per_layer=()):
  """Per-kernel fractions (dict `path -> fraction`): `fraction` for every
  kernel and `fraction * output_rate` for the last one (the output layer),
  unless `per_layer` gives one fraction per kernel in model order."""
  paths = list(paths)
  if per_layer:
    if len(per_layer) != len(paths):
      raise ValueError(
          f"per-layer fractions need one value per prunable kernel, in model "
          f"order ({len(paths)}: {paths}). Received: {list(per_layer)}.")
    return dict(zip(paths, per_layer))
  fractions = {p: fraction for p in paths}
  fractions[paths[-1]] = fraction * output_rate
  return fractions


def prune_smallest(scores, keep, count):
  """Zeroes `keep` at the `count` kept entries of smallest `scores`."""
  keep = keep.copy()
  if count <= 0:
    return keep
  alive = np.flatnonzero(keep)
  # Stable sort: ties go to the earlier index, so results are reproducible.
  order = np.argsort(scores.ravel()[alive], kind="stable")[:count]
  keep.ravel()[alive[order]] = 0
  return keep


def _count(fraction, remaining):
  return int(round(fraction * remaining))


def layerwise_magnitude(weights, mask, fractions, rng=None):
  """Removes, in each kernel, its `fractions[path]` of kept weights with the
  smallest magnitude (Frankle & Carbin 2019)."""
  del rng
  return Mask({p: prune_smallest(np.abs(weights[p]), m,
                                  _count(fractions[p], m.sum()))
               for p, m in mask.items()})


def global_magnitude(weights, mask, fractions, rng=None):
  """Removes the kept weights of smallest magnitude over all kernels
  together: `round(f * remaining)` of them, where `f` is the fraction of the
  first kernel (the common rate; per-layer rates do not apply)."""
  del rng
  paths = list(mask)
  scores = np.concatenate([np.abs(weights[p]).ravel() for p in paths])
  keep = np.concatenate([mask[p].ravel() for p in paths])
  keep = prune_smallest(scores, keep, _count(fractions[paths[0]], keep.sum()))
  out, start = {}, 0
  for p in paths:
    size = mask[p].size
    out[p] = keep[start:start + size].reshape(mask[p].shape)
    start += size
  return Mask(out)


def random(weights, mask, fractions, rng=None):
  """The control: removes the same number of kept weights per kernel as
  `layerwise_magnitude`, chosen uniformly at random."""
  rng = rng or np.random.default_rng(0)
  return Mask({p: prune_smallest(rng.random(m.shape), m,
                                  _count(fractions[p], m.sum()))
               for p, m in mask.items()})


STRATEGIES = {
    "layerwise_magnitude": layerwise_magnitude,
    "global_magnitude": global_magnitude,
    "random": random,
}


def get(name):
  if name not in STRATEGIES:
    raise ValueError(f"Unknown pruning strategy {name!r}. Known: "
                     f"{sorted(STRATEGIES)}.")
  return STRATEGIES[name]
