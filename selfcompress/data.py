"""Datasets: IDX reading, checksummed loading and `tf.data` input pipelines.

Three datasets are registered (see `DATASETS`): ``"digits"`` (the 8x8 digits
bundled with scikit-learn, offline, the default), ``"mnist"`` and
``"fashion_mnist"`` (28x28, read from the original IDX ``.gz`` files or a
Keras ``.npz`` cache, optionally downloaded with `keras.utils.get_file`).
"""

import dataclasses
import gzip
import hashlib
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from selfcompress.errors import ConfigError, DataError

_SPLITS = ("x_train", "y_train", "x_test", "y_test")
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where an IDX dataset lives: file names, SHA-256 sums, URL, Keras cache."""

    name: str
    title: str  # how people write it: "MNIST", "Fashion-MNIST"
    base_url: str
    sha256: dict  # canonical file name -> SHA-256 hex digest
    cache_subdir: str  # under `<KERAS_HOME>/datasets/`, holds the four .gz files
    npz_names: tuple = ()  # Keras-format .npz files (keys x_train, ..., y_test)
    num_classes: int = 10
    default_num_validation: int = 5000


SPECS = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        sha256={
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            # As pinned by `keras.datasets.mnist.load_data`.
            "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        },
        cache_subdir="mnist",
        npz_names=("mnist.npz",),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        title="Fashion-MNIST",
        base_url="https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        sha256={
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        },
        cache_subdir="fashion-mnist",  # same folder as `keras.datasets.fashion_mnist`
        npz_names=("fashion_mnist.npz", "fashion-mnist.npz"),
    ),
}
DIGITS_NUM_TEST = 360  # 1,797 digits -> 1,437 train / 360 test
DATASETS = ("digits", "mnist", "fashion_mnist")


def read_idx(path):
    """Reads an IDX file (gzip-compressed or raw) into a NumPy array.

    The header is two zero bytes, a dtype code, the number of dimensions and
    one big-endian uint32 size per dimension; the data follow, big-endian.
    Raises `DataError` if the file is not valid gzip/IDX, is truncated or has
    trailing bytes.
    """
    path = os.fspath(path)
    fix = f"The file is damaged or not an IDX file: delete '{path}' and download it again."
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b" or path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(f"Could not decompress '{path}': corrupt or incomplete gzip stream ({e}). {fix}") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"'{path}' has no valid IDX magic number (expected two zero bytes, a dtype code and "
                        f"the number of dimensions). Received first bytes: {raw[:4]!r}. {fix}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"'{path}' has unknown IDX dtype code 0x{code:02X}; expected one of "
                        f"{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}. {fix}")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"'{path}' is truncated: its header announces {ndim} dimensions ({offset} bytes) but the "
                        f"file holds only {len(raw)} bytes. {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"'{path}' {problem}: the header announces shape {shape} ({expected} bytes in total), "
                        f"but the file holds {len(raw)} bytes. {fix}")
    array = np.frombuffer(raw, dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def sha256sum(path, chunk_size=1 << 20):
    """Returns the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _known_file(digest):
    """The registered dataset file whose SHA-256 is `digest`: (spec, file name), or None."""
    for spec in SPECS.values():
        for fname, expected in spec.sha256.items():
            if expected == digest:
                return spec, fname
    return None


def _verify(path, spec):
    fname = os.path.basename(path)
    expected = spec.sha256.get(fname)
    if expected is None:
        return  # only the canonical file names have known checksums
    actual = sha256sum(path)
    if actual == expected:
        return
    known = _known_file(actual)
    if known is not None and known[0].name != spec.name:
        other = known[0]
        raise DataError(
            f"'{path}' is the official {other.title} file '{known[1]}' (its SHA-256 {actual} is "
            f"{other.title}'s), but the dataset is {spec.name!r} ({spec.title}). These are the "
            f"{other.title} files: set dataset={other.name} (config field `dataset`) to train on "
            f"{other.title}, or point data_dir at the {spec.title} files. The files are not damaged; "
            "do not delete them.")
    if known is not None:
        raise DataError(
            f"'{path}' is the official {spec.title} file '{known[1]}' under the name '{fname}': the "
            f"files are swapped or renamed. Give each file its own name ('{known[1]}' holds what "
            f"'{fname}' should); the files themselves are not damaged.")
    raise DataError(f"Checksum mismatch for '{path}' ({spec.name}): expected SHA-256 {expected}, "
                    f"received {actual}, which is not the checksum of any known {spec.title} or "
                    f"{' or '.join(s.title for s in SPECS.values() if s.name != spec.name)} file. The "
                    "file is corrupt or not the official one: delete it and download it again "
                    "(`download=True`), or pass `verify_checksums=False` if you deliberately use a "
                    "modified copy.")


def _keras_cache_dir():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets")


def _load_digits(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_NUM_TEST, stratify=labels, random_state=seed)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read_files(directory, spec, verify_checksums, idx=True):
    """Reads the four IDX files (if `idx`), or else a Keras .npz, from `directory`.

    Returns ``(arrays, sources)``, `sources` naming where each split came from,
    or None if the files are absent.
    """
    idx_paths = {k: os.path.join(directory, f) for k, f in _IDX_FILES.items()}
    if idx and all(os.path.isfile(p) for p in idx_paths.values()):
        if verify_checksums:
            for p in idx_paths.values():
                _verify(p, spec)
        return {k: read_idx(p) for k, p in idx_paths.items()}, {k: f"'{p}'" for k, p in idx_paths.items()}
    for npz_name in spec.npz_names:
        path = os.path.join(directory, npz_name)
        if os.path.isfile(path):
            if verify_checksums:
                _verify(path, spec)
            try:
                with np.load(path, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in _SPLITS}
            except (OSError, ValueError, KeyError, zlib.error) as e:
                raise DataError(f"Could not read '{path}' as a Keras .npz with keys {', '.join(_SPLITS)} ({e}). "
                                "Delete the file and download it again.") from e
            return arrays, {k: f"'{path}' (array {k!r})" for k in _SPLITS}
    return None


def _download(directory, spec):
    """Downloads the four IDX files into `directory` with `keras.utils.get_file`."""
    import keras

    os.makedirs(directory, exist_ok=True)
    for fname in _IDX_FILES.values():
        path = keras.utils.get_file(fname, origin=spec.base_url + fname, file_hash=spec.sha256[fname],
                                    cache_dir=directory, cache_subdir="")
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(directory):
            raise DataError(f"Downloaded '{fname}' to '{path}' instead of '{directory}' (directory not "
                            "writable?). Make the directory writable or pass another `data_dir`.")


def load_arrays(name, data_dir=None, verify_checksums=True, download=False):
    """Loads a dataset as NumPy arrays.

    Args:
        name: One of `DATASETS`.
        data_dir: Directory holding the four IDX ``.gz`` files (or a Keras
            ``.npz`` such as ``mnist.npz``). If None, the Keras cache
            (``~/.keras/datasets/``, or ``$KERAS_HOME/datasets/``) is searched.
            Ignored for ``"digits"``.
        verify_checksums: Check SHA-256 sums of files with canonical names.
        download: Download missing files with `keras.utils.get_file`.

    Returns:
        Dict with ``x_train``, ``x_test`` (uint8, N x H x W) and ``y_train``,
        ``y_test`` (int64, N).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset. Expected one of {DATASETS}. Received: name={name!r}")
    if name == "digits":
        return _check_arrays(_load_digits(), name, 10, {k: "scikit-learn's digits" for k in _SPLITS})
    spec = SPECS[name]
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if not os.path.isdir(data_dir) and not download:
            raise DataError(f"The data directory for {name!r} does not exist. Received: data_dir='{data_dir}'. "
                            "Fix the path, or pass `download=True` (config field `download: true`) to "
                            "download the data there.")
        candidates = [data_dir]
    else:
        cache = _keras_cache_dir()
        candidates = [os.path.join(cache, spec.cache_subdir), cache]
    found = None
    for i, directory in enumerate(candidates):
        if os.path.isdir(directory):  # the Keras cache root itself only holds .npz files
            found = _read_files(directory, spec, verify_checksums, idx=data_dir is not None or i == 0)
            if found is not None:
                break
    if found is None:
        target = candidates[0]
        if not download:
            missing = [f for f in _IDX_FILES.values() if not os.path.isfile(os.path.join(target, f))]
            raise DataError(f"The {name!r} data files were not found. Searched: {candidates}; missing in "
                            f"'{target}': {missing}. Either pass `download=True` (config field "
                            f"`download: true`) to download them from {spec.base_url}, or put the four "
                            f"files {list(_IDX_FILES.values())} (or {spec.npz_names[0]}) into '{target}'.")
        _download(target, spec)
        found = _read_files(target, spec, verify_checksums)
    arrays, sources = found
    return _check_arrays(arrays, name, spec.num_classes, sources)


def _check_arrays(arrays, name, num_classes, sources):
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Inconsistent {name!r} {split} data: expected images N x H x W and N labels. "
                            f"Received: x_{split}.shape={x.shape}, y_{split}.shape={y.shape}. Check that "
                            "the files are not swapped or damaged; delete them and download them again.")
        check_labels(y, num_classes, f"{sources[f'y_{split}']} ({name!r} {split} labels)")
    return {k: arrays[k].astype(np.uint8 if k.startswith("x") else np.int64, copy=False) for k in _SPLITS}


def check_labels(y, num_classes, source="the labels"):
    """Raises `DataError` (a ValueError) unless every label is an integer class index in [0, num_classes).

    Out-of-range labels would otherwise reach the loss, which turns them into
    NaN or garbage gradients that look like a diverging run. Cost: a min and a
    max over the labels.
    """
    y = np.asarray(y)
    if y.size == 0:
        return
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
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


def dataset_stats(x_train):
    """Returns the pixel ``(mean, std)`` of images scaled to [0, 1]."""
    x = np.asarray(x_train)
    if x.dtype == np.uint8:  # exact and memory-light via a histogram
        counts = np.bincount(x.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256) / 255.0
        mean = float(counts @ values / counts.sum())
        std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    else:
        scaled = x.astype(np.float64) / 255.0
        mean, std = float(scaled.mean()), float(scaled.std())
    return mean, std


def make_dataset(x, y, batch_size, *, training, seed=0, mean=None, std=None, flatten=False,
                 add_channel_axis=True, drop_remainder=False, first_epoch=None):
    """Builds a batched `tf.data.Dataset` of ``(float32 images, int32 labels)``.

    Pixels are scaled to [0, 1], then normalised as ``(x - mean) / std`` when
    `mean`/`std` are given (compute them with `dataset_stats`). Training
    datasets are shuffled with `seed`, reshuffled every epoch. Images have
    shape (H, W, 1), (H, W) if `add_channel_axis=False`, or (H*W,) if `flatten`.

    With `first_epoch` (training only) the dataset is endless: epoch `e` is
    shuffled with a seed derived from `(seed, e)`, so a run resumed at epoch
    `k` sees exactly the batches an uninterrupted run would (use it with
    `fit(steps_per_epoch=ceil(N / batch_size))`).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"Expected images of shape (N, H, W) and labels of shape (N,). "
                         f"Received: x.shape={x.shape}, y.shape={y.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if std is not None and not std > 0:
        raise ValueError(f"`std` must be positive. Received: std={std}")
    if flatten:
        x = x.reshape(len(x), -1)
    elif add_channel_axis:
        x = x[..., np.newaxis]
    offset = 0.0 if mean is None else float(mean)
    scale = 1.0 if std is None else float(std)

    def preprocess(images, labels):
        return (tf.cast(images, tf.float32) / 255.0 - offset) / scale, labels

    if training and first_epoch is not None:
        images, labels = tf.constant(x), tf.constant(y.astype(np.int32))
        n = len(x)

        def epoch(e):
            # A stateless permutation per (seed, epoch): resumable exactly.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
            return tf.data.Dataset.from_tensor_slices(order).batch(
                batch_size, drop_remainder=drop_remainder)

        ds = tf.data.Dataset.range(int(first_epoch), 1 << 40).flat_map(epoch)
        ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
        if training:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class Datasets:
    """Input pipelines and metadata returned by `load`."""

    name: str
    train: tf.data.Dataset
    validation: object  # tf.data.Dataset, or None when num_validation == 0
    test: tf.data.Dataset
    input_shape: tuple
    num_classes: int
    num_train: int
    num_validation: int
    num_test: int
    mean: float
    std: float
    train_from: object = None  # epoch -> the training stream from that epoch on


def load(name, data_dir=None, *, batch_size=60, num_validation=None, seed=0, flatten=False,
         download=False, verify_checksums=True, first_epoch=None, max_train_examples=None):
    """Loads a dataset and returns normalised train/validation/test pipelines.

    The validation set (`num_validation` examples; default 5,000 for MNIST and
    Fashion-MNIST, 0 for digits) is held out of the training set. Mean and
    std are computed on the remaining training images.
    """
    arrays = load_arrays(name, data_dir, verify_checksums=verify_checksums, download=download)
    if num_validation is None:
        num_validation = SPECS[name].default_num_validation if name in SPECS else 0
    x_train, y_train, x_val, y_val = split_validation(arrays["x_train"], arrays["y_train"], num_validation, seed)
    if max_train_examples:
        x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
    mean, std = dataset_stats(x_train)
    common = dict(mean=mean, std=std, flatten=flatten)
    train = make_dataset(x_train, y_train, batch_size, training=True, seed=seed,
                         first_epoch=first_epoch, **common)
    validation = make_dataset(x_val, y_val, batch_size, training=False, **common) if num_validation else None
    test = make_dataset(arrays["x_test"], arrays["y_test"], batch_size, training=False, **common)
    height, width = x_train.shape[1:]
    def train_from(epoch):
        return make_dataset(x_train, y_train, batch_size, training=True, seed=seed,
                            first_epoch=epoch, **common)

    return Datasets(name=name, train=train, validation=validation, test=test,
                    train_from=train_from,
                    input_shape=(height * width,) if flatten else (height, width, 1),
                    num_classes=SPECS[name].num_classes if name in SPECS else 10,
                    num_train=len(x_train), num_validation=num_validation, num_test=len(arrays["x_test"]),
                    mean=mean, std=std)
