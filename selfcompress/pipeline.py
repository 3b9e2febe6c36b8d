"""`tf.data` input pipelines over arrays in memory: the validation hold-out,
normalisation statistics, preprocessing and augmentation (`make_dataset`).

Every dataset, built-in or read from disk (`selfcompress.sources`), ends up
as NumPy arrays and goes through these, so they all keep the same
guarantees: the validation set is held out by seed, and the training order
and augmentation of epoch `e` are functions of `(seed, e)` alone, so a
resumed run sees the batches an uninterrupted run would have seen.
"""

import numpy as np
import tensorflow as tf

from selfcompress.errors import ConfigError, DataError


def check(name, source, opts):
    """The arrays of `source` checked against the options `opts` (a
    `selfcompress.data.Options`): `(arrays, num_classes)`, labels as int64
    class indices, or as float32 (N, targets) with a regression loss."""
    arrays, where = dict(source.arrays), source.where
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or y.ndim not in (1, 2) or len(x) != len(y) or not len(x):
            raise DataError(f"{where[f'x_{split}']}: expected {split} inputs of shape (N, ...) and N "
                            f"labels (N > 0). Received: x_{split}.shape={x.shape}, y_{split}.shape={y.shape}. "
                            "Write the data again with one label (or row of targets) per input.")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{where[f'x_{split}']}: inputs must be numbers; received dtype {x.dtype}.")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise DataError(f"{where[f'x_{split}']}: {int((~np.isfinite(x)).sum())} input values are NaN "
                            "or infinite: fix or drop those examples.")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{name!r}: the training inputs have shape {arrays['x_train'].shape[1:]} and the "
                        f"test inputs {arrays['x_test'].shape[1:]}; both splits need one input shape.")
    ys = {k: np.asarray(arrays[k]) for k in ("y_train", "y_test")}
    if opts.regression:
        for k, y in ys.items():
            if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or not np.all(np.isfinite(y)):
                raise DataError(f"{where[k]}: regression targets must be finite numbers; received dtype "
                                f"{y.dtype} with {int((~np.isfinite(y.astype(np.float64))).sum())} NaN or "
                                "infinite values." if np.issubdtype(y.dtype, np.number) else
                                f"{where[k]}: regression targets must be numbers; received dtype {y.dtype}.")
            arrays[k] = y.astype(np.float32).reshape(len(y), -1)
        if arrays["y_train"].shape[1:] != arrays["y_test"].shape[1:]:
            raise DataError(f"{name!r}: the training targets have shape {arrays['y_train'].shape[1:]} and "
                            f"the test targets {arrays['y_test'].shape[1:]}; both need one shape.")
        return arrays, arrays["y_train"].shape[1]
    for k, y in ys.items():
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"{where[k]}: class labels must be one integer per example; received shape "
                            f"{y.shape}. For real-valued targets set loss='mse' (or 'mae', 'huber') and "
                            "metrics=('mae',).")
        if (np.issubdtype(y.dtype, np.floating) and len(y)
                and not (np.all(np.isfinite(y)) and np.all(y == np.round(y)))):
            raise DataError(f"{where[k]}: class labels must be integers; received {y.dtype} values such as "
                            f"{', '.join(str(v) for v in y[:3])}. For real-valued targets set loss='mse' "
                            "(or 'mae', 'huber') and metrics=('mae',).")
        if len(y) and y.min() < 0:
            check_labels(y, 1 + int(y.max()), f"{where[k]} ({name!r} labels)")
        ys[k] = y
    num_classes = opts.num_classes or source.num_classes or 1 + int(max(y.max() for y in ys.values()))
    for k, y in ys.items():
        check_labels(y, num_classes, f"{where[k]} ({name!r} {k[2:]} labels)")
        arrays[k] = y.astype(np.int64)
    return arrays, num_classes


def check_labels(y, num_classes, source="the labels"):
    """Raises `DataError` (a ValueError) unless every label is an integer class index in [0, num_classes).

    Out-of-range labels would otherwise reach the loss, which turns them into
    NaN or garbage gradients that look like a diverging run. Cost: a min and a
    max over the labels.
    """
    y = np.asarray(y)
    if y.size == 0:
        return
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)) and (
            not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        sample = ", ".join(str(v) for v in y.ravel()[:5])
        raise DataError(f"{source}: labels must be integer class indices in [0, {num_classes - 1}]. "
                        f"Received labels of dtype {y.dtype} (first values: {sample}).")
    if y.min() >= 0 and y.max() < num_classes:
        return
    bad_mask = (y < 0) | (y >= num_classes)
    bad = np.unique(y[bad_mask])
    shown = ", ".join(str(v.item()) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
    raise DataError(
        f"{source}: {int(bad_mask.sum())} of {y.size} labels are outside the valid range [0, {num_classes - 1}] "
        f"for {num_classes} classes. Bad label values: {shown}. Each label must be a class index from 0 to "
        f"{num_classes - 1}: check that the label files belong to this dataset and are not damaged or "
        "swapped, or remap your labels.")



def split_validation(x, y, num_validation=5000, seed=0):
    """Holds out `num_validation` random training examples (deterministic given `seed`).

    Returns ``(x_train, y_train, x_val, y_val)``; both parts keep the original order.
    """
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    if not 0 <= num_validation < len(x):
        raise ConfigError(f"`num_validation` must be in [0, {len(x)}) (the training-set size) so that some "
                         f"training data remain. Received: num_validation={num_validation}")
    held_out = np.zeros(len(x), dtype=bool)
    held_out[np.random.default_rng(seed).permutation(len(x))[:num_validation]] = True
    return x[~held_out], y[~held_out], x[held_out], y[held_out]


def dataset_stats(x_train, rescale=None):
    """Returns the ``(mean, std)`` over every value of the inputs, scaled as
    `make_dataset` scales them: by `rescale`, or when None uint8 pixels to
    [0, 1] and other inputs as they are."""
    x = np.asarray(x_train)
    if x.dtype == np.uint8:  # exact and memory-light via a histogram
        counts = np.bincount(x.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256) / 255.0 if rescale is None else np.arange(256) * float(rescale)
        mean = float(counts @ values / counts.sum())
        std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    else:
        scaled = x.astype(np.float64) * (1.0 if rescale is None else float(rescale))
        mean, std = float(scaled.mean()), float(scaled.std())
    return mean, std


def augment(images, key, crop_padding=0, flip=False):
    """Random crop after zero padding and random horizontal flip of a batch of
    images (B, H, W, C), each image its own draw, from the stateless `key`
    (shape [2]): the same key gives the same batch."""
    keys = tf.random.experimental.stateless_split(key, 2)
    n = tf.shape(images)[0]
    if flip:
        coins = tf.random.stateless_uniform([n], keys[0]) < 0.5
        images = tf.where(coins[:, None, None, None], tf.reverse(images, [2]), images)
    if crop_padding:
        p = int(crop_padding)
        height, width = images.shape[1], images.shape[2]
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = tf.random.stateless_uniform([n, 2], keys[1], minval=0, maxval=2 * p + 1,
                                              dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
        cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images


def make_dataset(x, y, batch_size, *, training, seed=0, mean=None, std=None, flatten=False,
                 add_channel_axis=True, drop_remainder=False, first_epoch=None, rescale=None,
                 crop_padding=0, flip=False):
    """Builds a batched `tf.data.Dataset` of ``(float32 inputs, labels)``.

    Inputs are multiplied by `rescale` (None: uint8 pixels are divided by 255,
    other inputs kept as they are), then normalised as ``(x - mean) / std`` when
    `mean`/`std` are given (compute them with `dataset_stats`). Integer labels
    become int32 (class indices), floating ones float32 (regression targets).
    Images (N, H, W) get a channel axis, (N, H, W, 1), unless
    `add_channel_axis=False`; `flatten` gives (N, H*W...). Other shapes are
    kept.

    Training datasets are shuffled with `seed`, reshuffled every epoch, and
    augmented when `crop_padding` (pixels of zero padding around each
    normalised image, then a random crop back to its size) or `flip` (random
    horizontal flip) is set; both need images (N, H, W, C). Evaluation
    datasets are neither shuffled nor augmented.

    With `first_epoch` (training only) the dataset is endless: epoch `e` is
    shuffled and augmented with seeds derived from `(seed, e)`, so a run
    resumed at epoch `k` sees exactly the batches an uninterrupted run would
    (use it with `fit(steps_per_epoch=ceil(N / batch_size))`, or `N // batch_size` with
    `drop_remainder`).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim not in (1, 2) or len(x) != len(y):
        raise ValueError(f"Expected inputs of shape (N, ...) and labels of shape (N,) or (N, K). "
                         f"Received: x.shape={x.shape}, y.shape={y.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if std is not None and not std > 0:
        raise ValueError(f"`std` must be positive. Received: std={std}")
    uint8 = x.dtype == np.uint8
    if flatten:
        x = x.reshape(len(x), -1)
    elif add_channel_axis and x.ndim == 3:
        x = x[..., np.newaxis]
    augmenting = training and bool(crop_padding or flip)
    if augmenting and x.ndim != 4:
        raise ConfigError(f"Random crops and flips need images (height, width, channels); these "
                          f"inputs have shape {x.shape[1:]}. Set random_crop_padding=0 and "
                          "random_flip=False.")
    y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) or y.dtype == bool else y.astype(np.float32)
    offset = 0.0 if mean is None else float(mean)
    scale = 1.0 if std is None else float(std)

    def preprocess(images, labels):
        images = tf.cast(images, tf.float32)
        if rescale is not None:
            images = images * float(rescale)
        elif uint8:
            images = images / 255.0
        return (images - offset) / scale, labels

    def augmented(images, labels, key):
        images, labels = preprocess(images, labels)
        return augment(images, key, crop_padding, flip), labels

    if training and first_epoch is not None:
        images, labels = tf.constant(x), tf.constant(y)
        n = len(x)
        root = tf.constant([seed, 0x5EED], tf.int64)

        def epoch(e):
            # A stateless permutation per (seed, epoch): resumable exactly.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
            batches = tf.data.Dataset.from_tensor_slices(order).batch(
                batch_size, drop_remainder=drop_remainder)
            if not augmenting:
                return batches
            # One key per (seed, epoch, batch): the augmentation resumes exactly too.
            epoch_key = tf.random.experimental.stateless_fold_in(root, e)
            keys = tf.data.Dataset.range(1 << 40).map(
                lambda i: tf.random.experimental.stateless_fold_in(epoch_key, i))
            return tf.data.Dataset.zip((batches, keys))

        ds = tf.data.Dataset.range(int(first_epoch), 1 << 40).flat_map(epoch)
        if augmenting:
            ds = ds.map(lambda idx, key: augmented(tf.gather(images, idx), tf.gather(labels, idx), key),
                        num_parallel_calls=tf.data.AUTOTUNE)
            return ds.prefetch(tf.data.AUTOTUNE)
        ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if training:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if augmenting:
            keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(
                lambda r: tf.stack([tf.constant(seed, tf.int64), r]))
            ds = tf.data.Dataset.zip((ds, keys)).map(
                lambda batch, key: augmented(batch[0], batch[1], key), num_parallel_calls=tf.data.AUTOTUNE)
            return ds.prefetch(tf.data.AUTOTUNE)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
