"""Reference architectures, built as plain Keras models (compress them with
`selfcompress.compress`), looked up by name from configs."""

import keras

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


MODELS = {
    "mlp": mlp, "lenet300": lenet300, "lenet5": lenet5, "convnet": convnet,
    "resnet_tiny": resnet_tiny,
}


def get(name, input_shape, num_classes, **kwargs):
  """Builds the model registered as `name`."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}. Known: {sorted(MODELS)}.")
  return MODELS[name](tuple(input_shape), num_classes, **kwargs)
