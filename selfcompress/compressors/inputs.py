"""Learnable L0 gates on a layer's inputs: which inputs each layer reads.

A per-output-channel compressor decides whether a channel lives and how many
bits its weights take; every alive channel still reads every alive input.
`InputGates` adds one hard-concrete gate (Louizos et al., 2018; the math of
`compressors.gates`) per input channel of the kernel (a Dense layer's kernel
rows, a convolution's input channels) and wraps a per-output compressor
(`BitDepth`, `HardConcreteGate`, `GatedBitDepth`), the *inner* one:

  `kernel <- inner(z_in * kernel)`,

`z_in` broadcast along the kernel's input axis: sampled in training, the
deterministic test-time gate at inference, exactly 0 on a closed input. A
closed input is not read: the channel graph leaves it out of the layer's
fan-in (and a producer channel that no consumer reads is dead), `shed()`
takes it out of the kernel (and out of its producer, or gathers the kept
features in front of the layer when the producer cannot lose channels, as a
model input), and the size accounting no longer counts its weights. The
penalty prices each alive output channel's bits times its fan-in; the
expected fan-in, `sum(P(z_in != 0))` over the alive inputs (times the
kernel area), carries the gradient to the input gates.

Names: `"inputs+bits"`, `"inputs+gates"`, `"inputs+gates+bits"` (the inner
compressor after the `+`), or `InputGates(inner=...)`.
"""

import collections
import math

import keras
from keras import ops

from selfcompress import kinds
from selfcompress.compressors import base
from selfcompress.compressors.gates import gates as gate_vector
from selfcompress.compressors.gates import prob_nonzero, test_gate

#: The input side of an input-gated layer: per input channel, `alive` (0/1,
#: exact: the test-time gate is open) and `expected` (`P(z != 0)`,
#: differentiable in the gates' `log_alpha`; 1 on held inputs).
InputState = collections.namedtuple("InputState", ["alive", "expected"])

# InputGates' own arguments; every other one goes to the inner compressor.
_OWN = ("input_log_alpha_init", "input_gate_lr_multiplier", "input_seed",
        "min_inputs")


class InputGates(base.ChannelCompressor):
  """L0 gates on a layer's input channels around a per-output compressor.

  Forward: the kernel is multiplied by the input gates (broadcast along its
  input axis, from `selfcompress.kinds`), then `inner` applies. Accounting:
  `state()` is the inner compressor's, per output channel; `input_state()`
  gives the inputs' exact liveness and expected count, which the channel
  graph multiplies into the layer's fan-in. Stored, a closed input costs
  nothing (its weights leave the layer); an open gate's test-time value is
  folded into the weights before they are quantized, so the inner
  compressor's storage is unchanged.

  Every method and attribute of the inner compressor that this class does
  not define (`assign`, `raw_bits`, `scale`, `assign_log_alpha`, ...) is the
  inner one's, so an input-gated layer is used like its inner compressor.

  Args:
    inner: the per-output-channel compressor: a name (`"bits"`, `"gates"`,
      `"gates+bits"`), a serialized dict or an instance (copied).
    input_log_alpha_init: initial `log_alpha` of every input gate (3.0: open,
      the first forward pass is the inner compressor's).
    input_gate_lr_multiplier: the input gates' `log_alpha` is stored divided
      by this factor, so its Adam learning rate is this many times the
      optimizer's.
    input_seed: seed of the input gates' noise (None: Keras' global seed).
    min_inputs: inputs kept open whatever the penalty says: the strongest
      gates (largest `log_alpha`) are held fully open (`z = 1`) when they
      would close. Default 1, so that a layer never stops reading. With
      `min_inputs >=` the number of inputs no input can close.
    **inner_kwargs: passed to the inner compressor (`bits_init`,
      `min_channels`, `log_alpha_init`, `storage`, ...).
  """

  def __init__(self, inner="bits", input_log_alpha_init=3.0,
               input_gate_lr_multiplier=10.0, input_seed=None, min_inputs=1,
               **inner_kwargs):
    from selfcompress import compressors
    inner = compressors.get(inner, **inner_kwargs)
    if isinstance(inner, InputGates):
      raise TypeError("InputGates cannot wrap InputGates: give it a "
                       f"per-output compressor. Received: inner={inner!r}")
    if not input_gate_lr_multiplier > 0:
      raise ValueError(
          "`input_gate_lr_multiplier` must be > 0. Received: "
          f"input_gate_lr_multiplier={input_gate_lr_multiplier}")
    if not math.isfinite(input_log_alpha_init):
      raise ValueError("`input_log_alpha_init` must be finite. Received: "
                       f"input_log_alpha_init={input_log_alpha_init}")
    if int(min_inputs) != min_inputs or min_inputs < 0:
      raise ValueError("`min_inputs` must be a non-negative integer. "
                       f"Received: min_inputs={min_inputs}")
    self.inner = inner
    self.input_log_alpha_init = float(input_log_alpha_init)
    self.input_gate_lr_multiplier = float(input_gate_lr_multiplier)
    self.input_seed = None if input_seed is None else int(input_seed)
    self.min_inputs = int(min_inputs)
    self.num_inputs = None
    self._input_shape = None

  # -- the inner compressor's side ------------------------------------------

  def __getattr__(self, name):
    # Only reached for names this class does not have.
    inner = self.__dict__.get("inner")
    if inner is None or name.startswith("__"):
      raise AttributeError(name)
    return getattr(inner, name)

  @property
  def min_channels(self):
    return self.inner.min_channels

  @property
  def num_channels(self):
    return self.inner.num_channels

  @property
  def stores_codes(self):
    return self.inner.stores_codes

  @property
  def overhead_bits_per_channel(self):
    # The input gates are folded into the stored weights: nothing to add.
    return self.inner.overhead_bits_per_channel

  def state(self):
    return self.inner.state()

  def alive(self):
    return self.inner.alive()

  def channel_variables(self):
    return self.inner.channel_variables()

  def held_channels(self):
    return self.inner.held_channels()

  def ranking(self):
    return self.inner.ranking()

  def pinned_count(self):
    return self.inner.pinned_count()

  def pinned_channels(self):
    return self.inner.pinned_channels()

  def flat(self, tensor):
    return self.inner.flat(tensor)

  def broadcast(self, vector):
    return self.inner.broadcast(vector)

  # -- building -------------------------------------------------------------

  def check_layer(self, layer):
    """Raises if `layer` (not yet built) cannot gate its inputs."""
    kind = kinds.of(layer)
    if kind is None or not kind.gates_inputs(layer):
      raise ValueError(
          f"Layer {layer.name!r} ({type(layer).__name__}) cannot gate its "
          "inputs: its input channels are not one axis of its kernel (a "
          "depthwise or grouped convolution, an embedding, an EinsumDense "
          "the channel graph does not follow). Use the inner compressor "
          f"({type(self.inner).__name__}) for it; compress() does so itself.")

  def build(self, layer, kernel, param_shape):
    self.check_layer(layer)
    shape = kinds.of(layer).input_param_shape(layer)
    self.inner.build(layer, kernel, param_shape)
    if hasattr(self.inner, "stored_kernel"):  # e.g. SparseBitDepth
      self.inner.stored_kernel = lambda: self._gated(kernel, False)
    self._input_shape = tuple(int(d) for d in shape)
    self.num_inputs = math.prod(self._input_shape)
    self.input_log_alpha_param = base.add_param(
        layer, "input_log_alpha", (self.num_inputs,),
        self.input_log_alpha_init / self.input_gate_lr_multiplier)
    # Set on the layer, so Keras tracks its state with the layer's variables.
    layer.input_gate_seed_generator = keras.random.SeedGenerator(
        self.input_seed, name="input_gate_seed")
    self._input_seed_generator = layer.input_gate_seed_generator

  def initialize(self, kernel):
    self.inner.initialize(kernel)
    self.input_log_alpha_param.assign(ops.full(
        (self.num_inputs,),
        self.input_log_alpha_init / self.input_gate_lr_multiplier))

  # -- the input gates ------------------------------------------------------

  def input_variables(self):
    """The variables holding one value per input channel (what `shed()`
    slices along with the kernel's input axis)."""
    return [self.input_log_alpha_param]

  def input_log_alpha(self):
    return self.input_log_alpha_param * self.input_gate_lr_multiplier

  def assign_input_log_alpha(self, log_alpha):
    """Sets every input gate's `log_alpha` (a scalar or per-input vector)."""
    self.input_log_alpha_param.assign(ops.broadcast_to(
        ops.cast(log_alpha, "float32"), (self.num_inputs,))
                                      / self.input_gate_lr_multiplier)

  def held_inputs(self):
    """Inputs that `min_inputs` holds open (0/1): the strongest gates
    (largest `log_alpha`) if they would otherwise be closed. An open gate
    is never held, so its test-time value (which scales its input) does not
    depend on how many inputs the layer has: `shed()` keeps it."""
    la = self.input_log_alpha()
    if self.min_inputs == 0:
      return ops.zeros_like(la)
    closed = ops.cast(ops.less_equal(test_gate(la), 0.0), la.dtype)
    return base.keep_top_channels(la, self.min_inputs) * closed

  def pinned_inputs(self):
    """Inputs (0/1) that `shed()` keeps even when they are dead upstream, so
    that the smaller layer holds the same inputs open (see
    `ChannelCompressor.pinned_channels`): the top `min_inputs` by
    `log_alpha`, ties broken by index."""
    n = self.num_inputs
    if self.min_inputs == 0:
      return ops.zeros((n,))
    if self.min_inputs >= n:
      return ops.ones((n,))
    indices = ops.top_k(self.input_log_alpha(), self.min_inputs,
                        sorted=True)[1]
    return ops.minimum(ops.sum(ops.one_hot(indices, n), axis=0), 1.0)

  def input_gates(self, training=False, held=None):
    """Per-input gate vector: sampled in training, deterministic else; 1 on
    held inputs."""
    if held is None:
      held = self.held_inputs()
    return gate_vector(self.input_log_alpha(), training, held,
                       self._input_seed_generator)

  def input_state(self):
    """The inputs' `InputState`: which are read (exact) and how many are
    expected to be (differentiable)."""
    held = self.held_inputs()
    alive = ops.cast(ops.greater(self.input_gates(False, held), 0.0),
                     "float32")
    expected = ops.where(ops.cast(held, "bool"), 1.0,
                         prob_nonzero(self.input_log_alpha()))
    return InputState(alive=alive, expected=expected)

  def _gated(self, kernel, training):
    gates = ops.reshape(self.input_gates(training), self._input_shape)
    return ops.multiply(base.value(kernel), gates)

  # -- forward pass ---------------------------------------------------------

  def apply(self, kernel, bias, training=False):
    return self.inner.apply(self._gated(kernel, training), bias, training)

  def codes(self, kernel, bits=None):
    """The inner compressor's codes of the kernel as stored: times the
    test-time input gates (closed inputs give zeros)."""
    return self.inner.codes(self._gated(kernel, False), bits)

  # -- serialisation ----------------------------------------------------------

  def get_config(self):
    from selfcompress import compressors
    return {"inner": compressors.serialize(self.inner),
            "input_log_alpha_init": self.input_log_alpha_init,
            "input_gate_lr_multiplier": self.input_gate_lr_multiplier,
            "input_seed": self.input_seed, "min_inputs": self.min_inputs}

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def input_state(compressor):
  """`compressor.input_state()` if it gates its inputs, else None."""
  state = getattr(compressor, "input_state", None)
  return None if state is None else state()


def without_input_gates(compressor):
  """The per-output compressor of an input-gated one (else itself)."""
  return compressor.inner if isinstance(compressor, InputGates) else compressor
