"""Per-channel compression methods, looked up by name like Keras quantizers."""

import inspect

from selfcompress.compressors.base import ChannelCompressor
from selfcompress.compressors.bits import BitDepth
from selfcompress.compressors.gates import GatedBitDepth, HardConcreteGate
from selfcompress.compressors.inputs import InputGates
from selfcompress.compressors.sparse import SparseBitDepth

_REGISTRY = {
    "bits": BitDepth,
    "bit_depth": BitDepth,
    "gates": HardConcreteGate,
    "hard_concrete": HardConcreteGate,
    "gates+bits": GatedBitDepth,
    "input_gates": InputGates,
    "sparse_bits": SparseBitDepth,
}

# Names of a class with preset arguments: input gates around each
# per-output compressor ("inputs+" then the inner one's name).
_PRESETS = {f"inputs+{name}": (InputGates, {"inner": name})
            for name in ("bits", "gates", "gates+bits", "sparse_bits")}


def register(name, cls):
  """Makes `cls` available to `get()` under `name`."""
  if not issubclass(cls, ChannelCompressor):
    raise TypeError(f"{cls} is not a ChannelCompressor subclass.")
  _REGISTRY[name] = cls


def serialize(compressor):
  return {"class_name": type(compressor).__name__,
          "config": compressor.get_config()}


def get(identifier, **overrides):
  """Returns a new compressor from a name, a config dict or an instance.

  A fresh object is always returned: a compressor holds one layer's
  variables and must never be shared between layers.
  """
  if isinstance(identifier, ChannelCompressor):
    return _construct(type(identifier),
                      {**identifier.get_config(), **overrides})
  if isinstance(identifier, str):
    if identifier in _PRESETS:
      cls, preset = _PRESETS[identifier]
      return _construct(cls, {**preset, **overrides})
    cls = _REGISTRY.get(identifier)
    if cls is None:
      raise ValueError(
          f"Unknown compressor {identifier!r}. Known: "
          f"{sorted(_REGISTRY) + sorted(_PRESETS)}; or pass a "
          "ChannelCompressor instance.")
    return _construct(cls, overrides)
  if isinstance(identifier, dict) and "class_name" in identifier:
    classes = {c.__name__: c for c in _REGISTRY.values()}
    cls = classes.get(identifier["class_name"])
    if cls is None:
      raise ValueError(f"Unknown compressor class {identifier['class_name']!r}."
                       f" Known: {sorted(classes)}.")
    return _construct(cls, {**identifier.get("config", {}), **overrides})
  raise ValueError(
      "Could not interpret compressor. Expected a name, a serialized dict or "
      f"a ChannelCompressor. Received: {identifier!r}")


def _construct(cls, config):
  try:
    return cls.from_config(config)
  except TypeError as e:
    accepted = [p for p in inspect.signature(cls.__init__).parameters
                if p != "self"]
    raise TypeError(
        f"{cls.__name__} was given arguments it does not take: {e}. It "
        f"takes {accepted}. Pass each compressor its own arguments, e.g. as "
        "an instance: compressor=selfcompress.compressors."
        f"{cls.__name__}(...).") from e


def names():
  """Every name `get()` takes."""
  return sorted(_REGISTRY) + sorted(_PRESETS)


__all__ = ["ChannelCompressor", "BitDepth", "GatedBitDepth",
           "HardConcreteGate", "InputGates", "SparseBitDepth", "get", "names",
           "serialize", "register"]
