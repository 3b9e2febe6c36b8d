"""`Mask`: which weights of a model's prunable kernels are kept.

A mask maps the path of each prunable kernel (`"lenet300/dense/kernel"`, as
`keras.Variable.path`) to an array of its shape holding 1 (kept) or 0
(pruned). Keras numbers layer names per process (`dense`, `dense_3`, ...),
so a mask is applied to a model by kernel order, with shapes checked; the
paths are for reading. It validates itself on construction, reports its sparsity, and is
saved atomically as one `.npz` file per IMP level.
"""

import numpy as np

from selfcompress import checkpoint


class Mask:
  """0/1 arrays keyed by kernel path, validated on construction.

  Args:
    arrays: dict `path -> array`; every value must be exactly 0 or 1.

  Raises:
    ValueError: naming the kernel and the offending values.
  """

  def __init__(self, arrays):
    if not arrays:
      raise ValueError("A Mask needs at least one kernel. Received: arrays={}")
    self._arrays = {}
    for path, array in arrays.items():
      array = np.asarray(array)
      bad = array[(array != 0) & (array != 1)]
      if bad.size:
        raise ValueError(
            f"Mask entries must be 0 or 1. Received for {path!r}: "
            f"{np.unique(bad)[:5].tolist()}. Build masks from booleans.")
      self._arrays[path] = array.astype(np.float32)

  @classmethod
  def ones(cls, shapes):
    """The mask keeping everything, for `shapes` (dict `path -> shape`)."""
    return cls({path: np.ones(shape, np.float32) for path, shape in shapes.items()})

  def __getitem__(self, path):
    return self._arrays[path]

  def __iter__(self):
    return iter(self._arrays)

  def __len__(self):
    return len(self._arrays)

  def items(self):
    return self._arrays.items()

  def __eq__(self, other):
    """Same arrays in the same order (paths may differ, see above)."""
    return (isinstance(other, Mask) and len(self) == len(other) and
            all(np.array_equal(a, b) for a, b in
                zip(self._arrays.values(), other._arrays.values())))

  @property
  def num_total(self):
    return int(sum(a.size for a in self._arrays.values()))

  @property
  def num_remaining(self):
    return int(sum(a.sum() for a in self._arrays.values()))

  @property
  def density(self):
    """Fraction of weights kept (1.0 for a dense mask)."""
    return self.num_remaining / self.num_total

  @property
  def sparsity(self):
    """Fraction of weights pruned."""
    return 1.0 - self.density

  def per_layer(self):
    """dict `path -> (remaining, total)`."""
    return {p: (int(a.sum()), int(a.size)) for p, a in self._arrays.items()}

  def check_shapes(self, shapes):
    """Raises ValueError unless the mask's kernels have `shapes` (a list of
    shapes in model order)."""
    mine = [tuple(a.shape) for a in self._arrays.values()]
    theirs = [tuple(s) for s in shapes]
    if mine != theirs:
      raise ValueError(
          "The mask does not fit the model's prunable kernels. Mask: "
          f"{mine}; model: {theirs}. Masks only transfer between runs of "
          "the same model.")

  def save(self, path):
    """Writes the mask to `path` (.npz) atomically."""
    def write(tmp):
      np.savez_compressed(
          tmp, paths=np.array(list(self._arrays)),
          **{f"m{i}": a.astype(np.uint8)
             for i, a in enumerate(self._arrays.values())})
    checkpoint.atomic_write(path, write)

  @classmethod
  def load(cls, path):
    with np.load(path, allow_pickle=False) as f:
      return cls({str(p): f[f"m{i}"] for i, p in enumerate(f["paths"])})

  def __repr__(self):
    return (f"Mask({len(self)} kernels, {self.num_remaining:,}/"
            f"{self.num_total:,} kept, sparsity {self.sparsity:.4f})")
