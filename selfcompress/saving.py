"""Loading `.keras` files of self-compressing models.

Keras finds a custom class by its registered name ("selfcompress>Dense",
"selfcompress>SelfCompressingModel"), which exists only once the module that
registers it has been imported. When loading, Keras imports a class's module
by itself only for its own packages (keras, keras_hub, keras_cv, keras_nlp);
for any other package, such as this one, `keras.models.load_model` fails with
"Could not locate class 'SelfCompressingModel'" unless `selfcompress` was
imported first. `load_model` here imports it by being called, and names the
modules to import when a file also holds classes of other packages.
"""

import json
import os
import zipfile

import keras


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
  """`keras.saving.load_model` with the selfcompress classes registered.

  Same arguments as `keras.saving.load_model`. Equivalent to
  `import selfcompress` followed by `keras.models.load_model(filepath)`.

  Raises:
    TypeError: the file uses registered classes that no imported module
      defines; the message lists them with the module each came from.
  """
  import selfcompress  # noqa: F401  (registers every selfcompress class)

  try:
    return keras.saving.load_model(filepath, custom_objects=custom_objects,
                                   compile=compile, safe_mode=safe_mode)
  except TypeError as e:
    if "Could not locate" not in str(e):
      raise
    missing = unregistered_classes(filepath, custom_objects)
    if not missing:
      raise
    names = ", ".join(f"{name!r} (module {module})" if module else repr(name)
                      for name, module in missing)
    modules = sorted({m for _, m in missing if m})
    raise TypeError(
        f"Cannot load {os.fspath(filepath)}: it uses classes that no "
        f"imported module has registered: {names}. Import "
        f"{', '.join(modules) or 'the modules that define them'} (where "
        "they are decorated with @keras.saving.register_keras_serializable) "
        "before loading, or pass them in `custom_objects`.") from e


def unregistered_classes(filepath, custom_objects=None):
  """(registered name, module) of each class a `.keras` file uses that is
  not registered in this process (empty if the file cannot be read)."""
  try:
    with zipfile.ZipFile(filepath) as z:
      config = json.loads(z.read("config.json"))
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return []
  found = {}

  def walk(node):
    if isinstance(node, dict):
      name, module = node.get("registered_name"), node.get("module")
      builtin = isinstance(module, str) and module.split(".")[0] in (
          "keras", "keras_hub", "keras_cv", "keras_nlp")
      if (isinstance(name, str) and "class_name" in node and not builtin
          and keras.saving.get_registered_object(
              name, custom_objects=custom_objects) is None):
        found.setdefault(name, module)
      for value in node.values():
        walk(value)
    elif isinstance(node, list):
      for value in node:
        walk(value)

  walk(config)
  return sorted(found.items())
