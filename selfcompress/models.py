"""Reference architectures, built as plain Keras models (compress them with
`selfcompress.compress`), and `get`, which builds the model a config names.

`config.model` takes four forms (`get`):

  a built-in name           `MODELS`: mlp, lenet300, lenet5, convnet, ...
  "package.module:function" any importable builder
  "keras.applications.NAME" a keras.applications model, e.g. MobileNetV2
  "path/to/model.keras"     a saved model to start from (fine-tuning)

A builder, built-in or yours, is called as
`builder(input_shape, num_classes, **config.model_kwargs)`: `input_shape` is
one example's shape (e.g. (28, 28, 1)), `num_classes` the number of outputs
(classes; with a regression loss, targets per example). It returns a
`keras.Model` whose last layer gives those outputs as logits (no softmax).
"""

import importlib
import inspect
import os

import keras

from selfcompress.errors import ConfigError

L = keras.layers


def mlp(input_shape, num_classes, hidden=(300, 100),
        kernel_initializer="glorot_uniform"):
  """A ReLU MLP; `hidden=(300, 100)` is LeNet-300-100 (LeCun et al. 1998).
  The lottery-ticket work initialises it `"glorot_normal"`."""
  layers = [keras.Input(input_shape), L.Flatten()]
  layers += [L.Dense(units, activation="relu",
                     kernel_initializer=kernel_initializer) for units in hidden]
  layers += [L.Dense(num_classes, kernel_initializer=kernel_initializer)]
  return keras.Sequential(layers, name="mlp_" + "_".join(map(str, hidden)))


def lenet300(input_shape, num_classes, kernel_initializer="glorot_uniform"):
  """LeNet-300-100: 784-300-100-10, 266,610 parameters on MNIST."""
  model = mlp(input_shape, num_classes, hidden=(300, 100),
              kernel_initializer=kernel_initializer)
  model.name = "lenet300"
  return model


def lenet5(input_shape, num_classes):
  """LeNet-5 as in Caffe and the L0/lottery-ticket papers: conv 20 and 50
  filters of 5x5 with 2x2 max pooling, fc 500, fc 10 (431,080 parameters)."""
  return keras.Sequential([
      keras.Input(input_shape),
      L.Conv2D(20, 5, activation="relu"), L.MaxPooling2D(2),
      L.Conv2D(50, 5, activation="relu"), L.MaxPooling2D(2),
      L.Flatten(), L.Dense(500, activation="relu"), L.Dense(num_classes),
  ], name="lenet5")


def convnet(input_shape, num_classes, filters=(32, 64), dense=128):
  """Conv-BN-ReLU blocks with max pooling, then a dense head: a small CNN
  for Fashion-MNIST and the 8x8 digits."""
  x = inputs = keras.Input(input_shape)
  for f in filters:
    x = L.Conv2D(f, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
  x = L.Flatten()(x)
  x = L.Dense(dense, activation="relu")(x)
  return keras.Model(inputs, L.Dense(num_classes)(x), name="convnet")


def resnet_tiny(input_shape, num_classes, filters=16):
  """Two residual blocks with BatchNorm: exercises Add in the channel graph."""
  x = inputs = keras.Input(input_shape)
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(x)))
  for _ in range(2):
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(x)))
    y = L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(y))
    x = L.ReLU()(L.Add()([x, y]))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(num_classes)(x), name="resnet_tiny")


def resnet20(input_shape, num_classes, filters=(16, 32, 64), blocks=3):
  """ResNet-20, the CIFAR ResNet of He et al. ("Deep Residual Learning for
  Image Recognition", 2016): a 3x3 conv stem, three stages of `blocks` basic
  blocks (3x3 conv-BN-ReLU, 3x3 conv-BN, the `x + y` shortcut, then ReLU)
  with `filters` channels, the first block of the later stages strided by 2
  with a 1x1 conv-BN projection on its shortcut; global average pooling and
  dense logits. `blocks=3` gives 20 layers (0.27M parameters)."""
  def conv_bn(x, units, size, stride):
    x = L.Conv2D(units, size, strides=stride, padding="same", use_bias=False,
                 kernel_initializer="he_normal")(x)
    return L.BatchNormalization()(x)

  x = inputs = keras.Input(input_shape)
  x = L.ReLU()(conv_bn(x, filters[0], 3, 1))
  for stage, units in enumerate(filters):
    for block in range(blocks):
      stride = 2 if stage and not block else 1
      y = conv_bn(L.ReLU()(conv_bn(x, units, 3, stride)), units, 3, 1)
      if stride != 1 or x.shape[-1] != units:
        x = conv_bn(x, units, 1, stride)
      x = L.ReLU()(x + y)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(num_classes)(x),
                     name=f"resnet{6 * blocks + 2}")


MODELS = {
    "mlp": mlp, "lenet300": lenet300, "lenet5": lenet5, "convnet": convnet,
    "resnet_tiny": resnet_tiny, "resnet20": resnet20,
}
APPLICATIONS = "keras.applications."
_FORMS = ("a built-in name (" + ", ".join(sorted(MODELS)) + "), "
          "'package.module:function' (a builder called as "
          "function(input_shape, num_classes, **model_kwargs)), "
          "'keras.applications.NAME' or a "
          "'path/to/model.keras' file")


def kind(spec):
  """Which form of `config.model` `spec` is: "builtin", "function",
  "application" or "file"; `ConfigError` if none."""
  spec = str(spec)
  if spec in MODELS:
    return "builtin"
  if spec.endswith(".keras"):
    return "file"
  if spec.startswith(APPLICATIONS) and spec[len(APPLICATIONS):].isidentifier():
    return "application"
  module, sep, attr = spec.partition(":")
  if (sep and all(p.isidentifier() for p in module.split("."))
      and all(p.isidentifier() for p in attr.split("."))):
    return "function"
  raise ConfigError(f"Bad config value: model={spec!r}: must be {_FORMS}.")


def validate(spec, kwargs=None):
  """Raises `ConfigError` if `spec` is no form of `config.model`, or takes
  no `model_kwargs` but has some."""
  if kind(spec) == "file" and kwargs:
    raise ConfigError(
        f"Bad config value: model_kwargs={dict(kwargs)}: model={spec!r} is a "
        "saved model, built already; remove model_kwargs.")


def get(name, input_shape, num_classes, **kwargs):
  """Builds the model `name` (any form of `config.model`, see the module
  docstring) for inputs of `input_shape` and `num_classes` outputs."""
  form = kind(name)
  validate(name, kwargs)
  if form in ("builtin", "function"):
    builder = MODELS[name] if form == "builtin" else _builder(name)
    _check_arguments(builder, name, (tuple(input_shape), num_classes), kwargs)
    model = builder(tuple(input_shape), num_classes, **kwargs)
  elif form == "application":
    model = _application(name, tuple(input_shape), num_classes, kwargs)
  else:
    model = _load(name)
  _check(model, name, tuple(input_shape), num_classes)
  return model


def _check_arguments(builder, spec, args, kwargs):
  """`ConfigError` unless `builder(*args, **kwargs)` fits its signature."""
  try:
    signature = inspect.signature(builder)
  except (TypeError, ValueError):  # a builtin or C function: no signature
    return
  try:
    signature.bind(*args, **kwargs)
  except TypeError as e:
    raise ConfigError(
        f"Bad config value: model_kwargs={dict(kwargs)}: {e} (model={spec!r} "
        f"is called as builder(input_shape, num_classes, **model_kwargs) and "
        f"takes {list(signature.parameters)}).") from e


def _builder(spec):
  """The function `"package.module:function"` names."""
  module_name, _, attr = spec.partition(":")
  bad = f"Bad config value: model={spec!r}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and (module_name + ".").startswith(e.name + "."):
      raise ConfigError(
          f"{bad}: there is no module {module_name!r} to import ({e}). Install "
          "the package that holds it (pip install -e FOLDER), or run with its "
          "parent folder on the path (PYTHONPATH=FOLDER python tools/train.py "
          "...).") from e
    raise ConfigError(f"{bad}: importing {module_name!r} failed: {e}. Install "
                      f"the package {e.name!r} it imports.") from e
  except Exception as e:  # the module's own code failed
    raise ConfigError(f"{bad}: importing {module_name!r} raised "
                      f"{type(e).__name__}: {e}. Fix that module.") from e
  builder = module
  for part in attr.split("."):
    if not hasattr(builder, part):
      public = sorted(n for n, v in vars(module).items()
                      if callable(v) and not n.startswith("_"))
      raise ConfigError(
          f"{bad}: {module_name!r} ({getattr(module, '__file__', '')}) has no "
          f"{attr!r}. Its functions and classes: {public}.")
    builder = getattr(builder, part)
  if not callable(builder):
    raise ConfigError(f"{bad}: {module_name}.{attr} is a "
                      f"{type(builder).__name__}, not a function: name the "
                      "function that builds the model.")
  return builder


def _application(spec, input_shape, num_classes, kwargs):
  """`keras.applications.NAME(input_shape=..., classes=num_classes,
  weights=None, classifier_activation=None, **kwargs)`: logits, no download."""
  name = spec[len(APPLICATIONS):]
  bad = f"Bad config value: model={spec!r}"
  builder = getattr(keras.applications, name, None)
  if builder is None or inspect.ismodule(builder) or not callable(builder):
    known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
    raise ConfigError(f"{bad}: keras.applications has no model {name!r}. "
                      f"Known: {known}.")
  weights = kwargs.get("weights")  # None unless given (not Keras' imagenet)
  if weights == "imagenet":
    raise ConfigError(
        f"Bad config value: model_kwargs.weights='imagenet': the ImageNet "
        "weights would be downloaded at run time, which this tool never does. "
        f"Save them once where there is internet (keras.applications.{name}("
        "weights='imagenet', ...).save_weights('FILE.weights.h5')) and pass "
        "model_kwargs.weights='FILE.weights.h5' (same classes and "
        "include_top), or weights=None to start from random weights.")
  if weights is not None and not os.path.isfile(os.path.expanduser(weights)):
    raise ConfigError(f"Bad config value: model_kwargs.weights={weights!r}: "
                      "no such file. Give the path of a weights file, or None.")
  params = inspect.signature(builder).parameters
  args = {"input_shape": input_shape, "classes": num_classes, "weights": None}
  if "classifier_activation" in params:
    args["classifier_activation"] = None  # logits, as the loss expects
  args.update(kwargs)
  unknown = sorted(set(args) - set(params))
  if unknown:
    raise ConfigError(f"Bad config value: model_kwargs={dict(kwargs)}: "
                      f"keras.applications.{name} takes no {unknown}; it "
                      f"takes {list(params)}.")
  if args["weights"] is not None:
    args["weights"] = os.path.expanduser(args["weights"])
  try:
    return builder(**args)
  except (ValueError, TypeError, OSError) as e:
    raise ConfigError(f"{bad}: keras.applications.{name}({args}) failed: "
                      f"{e}") from e


def _load(path):
  """The saved model at `path`, uncompiled."""
  bad = f"Bad config value: model={path!r}"
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    raise ConfigError(f"{bad}: the file does not exist (a relative path is "
                      f"read from the working directory, {os.getcwd()}). Fix "
                      "the path, or name a builder instead.")
  try:
    return keras.saving.load_model(full, compile=False)
  except Exception as e:  # zip, JSON, unknown classes, ...: one message
    raise ConfigError(
        f"{bad}: the file cannot be loaded as a Keras model "
        f"({type(e).__name__}: {e}). It is damaged, or not a .keras file "
        "written by model.save(); a model with layers of your own needs "
        "their module imported and "
        "registered (keras.saving.register_keras_serializable).") from e


def _check(model, spec, input_shape, num_classes):
  """`ConfigError` unless `model` is a keras.Model for these inputs and
  outputs."""
  bad = f"Bad config value: model={spec!r}"
  if not isinstance(model, keras.Model):
    raise ConfigError(f"{bad}: it gave a {type(model).__name__}, not a "
                      "keras.Model: the builder must return the model.")
  try:
    inputs, outputs = model.inputs, model.outputs
  except (AttributeError, ValueError):  # a subclassed model, not yet built
    return
  if not inputs or not outputs:
    return
  if len(inputs) != 1 or len(outputs) != 1:
    raise ConfigError(f"{bad}: the model has {len(inputs)} inputs and "
                      f"{len(outputs)} outputs; a config's dataset feeds one "
                      "input and trains one output.")
  shape = tuple(inputs[0].shape[1:])
  if len(shape) != len(input_shape) or any(
      s is not None and s != t for s, t in zip(shape, input_shape)):
    raise ConfigError(
        f"{bad}: the model takes inputs of shape {shape}, the dataset gives "
        f"{input_shape}. Build it for the shape it is given (its first "
        "argument), or change the data (image_size, color_mode).")
  units = outputs[0].shape[-1]
  if units is not None and units != num_classes:
    raise ConfigError(
        f"{bad}: the model has {units} outputs, the dataset needs "
        f"{num_classes} (classes, or regression targets). Give its last layer "
        "num_classes units (the builder's second argument); a saved model "
        "needs a new head for another task.")
