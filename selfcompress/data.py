"""Datasets: IDX reading, checksummed loading and `tf.data` input pipelines.

Three datasets are built in (see `DATASETS`): ``"digits"`` (the 8x8 digits
bundled with scikit-learn, offline, the default), ``"mnist"`` and
``"fashion_mnist"`` (28x28, read from the original IDX ``.gz`` files or a
Keras ``.npz`` cache, optionally downloaded with `keras.utils.get_file`).
Any other dataset on disk is named ``"KIND:LOCATION"`` (`.npz` files, image
folders, TFRecord files, TensorFlow Datasets: `selfcompress.sources`).
`from_config` loads the dataset a config describes; `load` returns the
pipelines of `selfcompress.pipeline` with the same guarantees for all.
"""

import dataclasses
import functools
import gzip
import hashlib
import math
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from selfcompress import pipeline, sources
from selfcompress.errors import ConfigError, DataError

# The checks and pipelines over the arrays; here too for `data.make_dataset` etc.
from selfcompress.pipeline import (
    check_labels,
    dataset_stats,
    make_dataset,
    split_validation,
)

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


@dataclasses.dataclass(frozen=True)
class Options:
    """A config's data settings besides `dataset`, `data_dir` and the split:
    the config fields of the same names (meanings: `selfcompress.config.DOCS`).
    Build it with `options_from(config)`."""

    image_size: tuple
    color_mode: str
    tfrecord: dict  # x_feature, x_dtype, x_shape, y_feature, y_dtype, y_shape
    num_classes: object  # None: from the data
    regression: bool  # from config.loss: real-valued targets, not class indices
    rescale: object  # None: 1/255 for uint8 inputs, 1 otherwise
    standardize: bool
    random_crop_padding: int
    random_flip: bool
    drop_remainder: bool = False


def _field(config, key):
    """`config`'s value of the (dotted) field `key`; `config` is a ConfigDict,
    or a dict as recorded in a workdir's config.json (nested, or flat as
    `selfcompress.workdir.flat` gives it). A record that predates a field has
    the field's default."""
    if isinstance(config, dict) and key in config:
        return config[key]
    node = config
    try:
        for part in key.split("."):
            node = node[part]
    except KeyError:
        from selfcompress import config as base_config
        return _field(base_config.base(), key)
    return node


def options_from(config=None):
    """The `Options` of `config` (a ConfigDict or a recorded dict); of
    `selfcompress.config.base()` when None."""
    from selfcompress import objectives
    if config is None:
        from selfcompress import config as base_config
        config = base_config.base()
    get = functools.partial(_field, config)
    tfrecord = {k: get(f"tfrecord.{k}") for k in ("x_feature", "x_dtype", "y_feature", "y_dtype")}
    tfrecord.update(x_shape=tuple(get("tfrecord.x_shape")), y_shape=tuple(get("tfrecord.y_shape")))
    return Options(image_size=tuple(get("image_size")), color_mode=get("color_mode"), tfrecord=tfrecord,
                   num_classes=get("num_classes"), regression=objectives.is_regression(get("loss")),
                   rescale=get("rescale"), standardize=get("standardize"),
                   random_crop_padding=get("random_crop_padding"), random_flip=get("random_flip"),
                   drop_remainder=bool(get("drop_remainder")))


def validate(config):
    """Raises `ConfigError` for a bad `dataset` or data field of `config`."""
    def bad(field, value, why):
        raise ConfigError(f"Bad config value: {field}={value!r}: {why}.")
    if config.dataset not in DATASETS:
        sources.validate(options_from(config), sources.parse(config.dataset)[0])
    if config.num_classes is not None and (isinstance(config.num_classes, bool) or config.num_classes < 1):
        bad("num_classes", config.num_classes, "must be a positive integer, or None to count the classes "
            "in the data")
    if config.rescale is not None and not (math.isfinite(config.rescale) and config.rescale > 0):
        bad("rescale", config.rescale, "must be a positive number (1/255 scales pixels to [0, 1]), or None")
    padding = config.random_crop_padding
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        bad("random_crop_padding", padding, "must be an integer >= 0 (pixels of padding; 0: no crops)")


def from_config(config, *, first_epoch=None):
    """`load(...)` with every setting from `config` (a ConfigDict, or a dict
    recorded in a workdir's config.json)."""
    get = functools.partial(_field, config)
    return load(get("dataset"), get("data_dir"), batch_size=get("batch_size"),
                num_validation=get("num_validation"), seed=get("seed"), download=get("download"),
                verify_checksums=get("verify_checksums"), first_epoch=first_epoch,
                max_train_examples=get("max_train_examples") or None, options=options_from(config))


@dataclasses.dataclass(frozen=True)
class Datasets:
    """Input pipelines and metadata returned by `load`."""

    name: str
    train: tf.data.Dataset
    validation: object  # tf.data.Dataset, or None when num_validation == 0
    test: tf.data.Dataset
    input_shape: tuple
    num_classes: int  # classes; with a regression loss, targets per example
    num_train: int
    num_validation: int
    num_test: int
    mean: float
    std: float
    train_from: object = None  # epoch -> the training stream from that epoch on
    steps_per_epoch: int = None  # training batches per epoch


def load(name, data_dir=None, *, batch_size=60, num_validation=None, seed=0, flatten=False,
         download=False, verify_checksums=True, first_epoch=None, max_train_examples=None, options=None):
    """Loads a dataset and returns normalised train/validation/test pipelines.

    `name` is a built-in dataset (`DATASETS`) or a file source
    (``"npz:PATH"``, ``"images:FOLDER"``, ``"tfrecord:PATTERN"``,
    ``"tfds:NAME"``; see `selfcompress.sources`). `options` (an `Options`;
    None: the defaults of `selfcompress.config.base()`) gives the source's
    settings, the preprocessing and the augmentation of the training set.
    The validation set (`num_validation` examples; default 5,000 for MNIST and
    Fashion-MNIST, 0 for digits, 10% of the training set for file sources) is
    held out of the training set by `seed`. Mean and std are computed on the
    remaining training inputs.
    """
    opts = options if options is not None else options_from()
    if name in DATASETS:
        arrays = load_arrays(name, data_dir, verify_checksums=verify_checksums, download=download)
        num_classes = SPECS[name].num_classes if name in SPECS else 10
        if num_validation is None:
            num_validation = SPECS[name].default_num_validation if name in SPECS else 0
        if opts.regression:
            arrays = dict(arrays, y_train=arrays["y_train"].astype(np.float32)[:, None],
                          y_test=arrays["y_test"].astype(np.float32)[:, None])
            num_classes = 1
    else:
        arrays, num_classes = pipeline.check(name, sources.read(name, data_dir, opts), opts)
        if num_validation is None:
            num_validation = len(arrays["x_train"]) // 10
    x_train, y_train, x_val, y_val = split_validation(arrays["x_train"], arrays["y_train"], num_validation, seed)
    if max_train_examples:
        x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
    mean, std = dataset_stats(x_train, opts.rescale) if opts.standardize else (0.0, 1.0)
    if not std > 0:
        raise DataError(f"The training inputs of {name!r} are all equal (standard deviation 0), so they "
                        "cannot be standardised: set standardize=False, or check the data.")
    add_channel_axis = x_train.ndim == 3 and x_train.dtype == np.uint8  # grayscale images
    common = {"mean": mean, "std": std, "flatten": flatten, "add_channel_axis": add_channel_axis,
              "rescale": opts.rescale}
    train_opts = {"crop_padding": opts.random_crop_padding, "flip": opts.random_flip,
                  "drop_remainder": opts.drop_remainder}
    if opts.drop_remainder and len(x_train) < batch_size:
        raise DataError(f"drop_remainder leaves no batch: {len(x_train)} training examples are fewer "
                        f"than batch_size={batch_size}. Lower batch_size or set drop_remainder=False.")
    train = make_dataset(x_train, y_train, batch_size, training=True, seed=seed,
                         first_epoch=first_epoch, **common, **train_opts)
    validation = make_dataset(x_val, y_val, batch_size, training=False, **common) if num_validation else None
    test = make_dataset(arrays["x_test"], arrays["y_test"], batch_size, training=False, **common)

    def train_from(epoch):
        return make_dataset(x_train, y_train, batch_size, training=True, seed=seed,
                            first_epoch=epoch, **common, **train_opts)

    shape = tuple(x_train.shape[1:])
    input_shape = (int(np.prod(shape)),) if flatten else shape + (1,) if add_channel_axis else shape
    return Datasets(name=name, train=train, validation=validation, test=test,
                    train_from=train_from, input_shape=input_shape, num_classes=num_classes,
                    num_train=len(x_train), num_validation=num_validation, num_test=len(arrays["x_test"]),
                    mean=mean, std=std,
                    steps_per_epoch=(len(x_train) // batch_size if opts.drop_remainder
                                     else -(-len(x_train) // batch_size)))
