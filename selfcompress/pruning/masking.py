"""Masks as Keras variables on the model's layers.

`attach(model)` gives every prunable layer (one with a trainable `kernel` of
rank >= 2: Dense, Conv*, EinsumDense) a non-trainable `kernel_mask` variable
and sets the kernel's constraint to `KernelMask`. Keras optimizers apply a
variable's constraint after every update, so under plain `model.fit` (and
`tf.distribute`, where the mask variable is mirrored like any other) a
pruned weight is exactly zero at every forward pass. No wrapper layer, no
callback to remember, no `clone_model`. The masks live in `model.weights`,
so they are saved with the weights.
"""

import keras
from keras import ops

from selfcompress.pruning.mask import Mask

MASK_NAME = "kernel_mask"


class KernelMask(keras.constraints.Constraint):
  """`w -> w * mask`, where `mask` is a variable read at every call."""

  def __init__(self, mask):
    self.mask = mask

  def __call__(self, w):
    return w * ops.cast(self.mask, w.dtype)


def _layers(model):
  for layer in model.layers:
    yield layer
    if hasattr(layer, "layers"):
      yield from _layers(layer)


def prunable(model):
  """The layers with a prunable kernel, in model order."""
  if not model.built:
    raise ValueError(f"Model {model.name!r} is not built; call it on data or "
                     "give it an Input before pruning.")
  found = []
  for layer in _layers(model):
    kernel = getattr(layer, "kernel", None)
    if (isinstance(kernel, keras.Variable) and kernel.trainable and
        len(kernel.shape) >= 2):
      found.append(layer)
  if not found:
    raise ValueError(f"Model {model.name!r} has no prunable kernel (Dense, "
                     "Conv or EinsumDense layers).")
  return found


def kernel_shapes(model):
  """dict `kernel path -> shape` of the prunable kernels."""
  return {l.kernel.path: tuple(l.kernel.shape) for l in prunable(model)}


def attach(model, mask=None):
  """Adds mask variables (all ones, or `mask`) to `model`'s prunable layers.

  Call it inside the `tf.distribute` strategy scope the model was built in,
  and before `compile`. Attaching twice is a no-op but for `mask`.
  """
  for layer in prunable(model):
    if getattr(layer, MASK_NAME, None) is None:
      # Keras locks a built layer's state; its own `quantize()` unlocks it
      # the same way to add variables after `build`.
      layer._tracker.unlock()
      try:
        variable = layer.add_weight(
            name=MASK_NAME, shape=layer.kernel.shape, initializer="ones",
            trainable=False, dtype="float32")
      finally:
        layer._tracker.lock()
      setattr(layer, MASK_NAME, variable)
      layer.kernel.constraint = KernelMask(variable)
  if mask is not None:
    apply(model, mask)
  return model


def _mask_variables(model):
  layers = prunable(model)
  missing = [l.name for l in layers if getattr(l, MASK_NAME, None) is None]
  if missing:
    raise ValueError(f"Layers {missing} have no mask; call "
                     "selfcompress.pruning.attach(model) first.")
  return {l.kernel.path: (l.kernel, getattr(l, MASK_NAME)) for l in layers}


def apply(model, mask):
  """Sets the mask variables to `mask` and zeroes the pruned weights now."""
  variables = _mask_variables(model)
  mask.check_shapes([tuple(k.shape) for k, _ in variables.values()])
  for (kernel, variable), (_, array) in zip(variables.values(), mask.items()):
    variable.assign(array)
    kernel.assign(kernel.constraint(kernel))


def mask_of(model):
  """The `Mask` held in `model`'s mask variables."""
  return Mask({p: ops.convert_to_numpy(v)
               for p, (_, v) in _mask_variables(model).items()})


def kernels(model):
  """dict `kernel path -> NumPy array` of the prunable kernels."""
  return {l.kernel.path: ops.convert_to_numpy(l.kernel)
          for l in prunable(model)}
