"""Datasets on disk besides the built-in ones: `.npz` files, image folders,
TFRecord files and TensorFlow Datasets, named in `config.dataset` as
``"KIND:LOCATION"``:

  npz:PATH          a Keras-style ``.npz`` with arrays ``x_train``, ``y_train``,
                    ``x_test``, ``y_test`` (as `keras.datasets` caches them)
  images:FOLDER     ``FOLDER/train/<class>/*.png`` and ``FOLDER/test/<class>/...``
                    (the `keras.utils.image_dataset_from_directory` layout; PNG,
                    JPEG, BMP or GIF; classes are the folder names, sorted)
  tfrecord:PATTERN  ``tf.train.Example`` records; PATTERN holds ``{split}``,
                    replaced by ``train`` and ``test`` and globbed
  tfds:NAME         a TensorFlow Datasets dataset already prepared in
                    ``data_dir`` (never downloaded here), splits ``train`` and
                    ``test``

A relative PATH, FOLDER or PATTERN is read from `config.data_dir` when it is
set (so moving the data only changes `data_dir`), else from the working
directory. Every reader returns the arrays in memory (`read`); `selfcompress.data`
checks them and builds the same pipelines as for the built-in datasets.
"""

import dataclasses
import glob
import os
import re
import shutil
import tempfile
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from selfcompress.errors import ConfigError, DataError

KINDS = ("npz", "images", "tfrecord", "tfds")
SPLITS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # image_dataset_from_directory's
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
X_DTYPES = ("image", "uint8", "float32", "int64")  # tfrecord.x_dtype
Y_DTYPES = ("int64", "float32")  # tfrecord.y_dtype
_FORMS = ("'npz:PATH.npz', 'images:FOLDER', 'tfrecord:PATTERN_WITH_{split}' or 'tfds:NAME'")


@dataclasses.dataclass(frozen=True)
class Source:
    """Arrays read from disk: `arrays` (x_train, ..., y_test), `where` (a
    description of each array's file, for messages), `num_classes` when the
    source knows it (class folders, a TFDS ClassLabel), else None."""

    arrays: dict
    where: dict
    num_classes: object = None


def parse(dataset):
    """`(kind, location)` of a `config.dataset` value that is not a built-in
    name; raises `ConfigError` naming the accepted forms."""
    kind, sep, location = str(dataset).partition(":")
    if not sep or kind not in KINDS or not location:
        raise ConfigError(
            f"Bad config value: dataset={dataset!r}: must be a built-in name (digits, mnist, "
            f"fashion_mnist) or a file source: {_FORMS}.")
    if kind == "tfrecord" and "{split}" not in location:
        raise ConfigError(
            f"Bad config value: dataset={dataset!r}: a TFRecord pattern must contain '{{split}}', "
            "which is replaced by 'train' and by 'test', e.g. 'tfrecord:records/{split}-*.tfrecord'.")
    return kind, location


def validate(options, kind):
    """Raises `ConfigError` for source settings that cannot work (`options`:
    a `selfcompress.data.Options`)."""
    if kind == "images":
        if options.color_mode not in COLOR_MODES:
            raise ConfigError(f"Bad config value: color_mode={options.color_mode!r}: must be one of "
                              f"{sorted(COLOR_MODES)}.")
        size = tuple(options.image_size)
        if size and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
            raise ConfigError(f"Bad config value: image_size={size!r}: must be (height, width) in "
                              "pixels, or () for the size of the images.")
    if kind == "tfrecord":
        spec = options.tfrecord
        if spec["x_dtype"] not in X_DTYPES:
            raise ConfigError(f"Bad config value: tfrecord.x_dtype={spec['x_dtype']!r}: must be one of "
                              f"{X_DTYPES}.")
        if spec["y_dtype"] not in Y_DTYPES:
            raise ConfigError(f"Bad config value: tfrecord.y_dtype={spec['y_dtype']!r}: must be one of "
                              f"{Y_DTYPES}.")
        shape = tuple(spec["x_shape"])
        if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ConfigError(f"Bad config value: tfrecord.x_shape={shape!r}: give the shape of one "
                              "input, e.g. (28, 28, 1) or (13,).")
        if spec["x_dtype"] == "image" and (len(shape) != 3 or shape[-1] not in (1, 3, 4)):
            raise ConfigError(f"Bad config value: tfrecord.x_shape={shape!r}: an encoded image decodes "
                              "to (height, width, channels) with 1, 3 or 4 channels.")


def resolve(location, data_dir):
    """A path of `config.dataset`, read from `data_dir` when relative."""
    path = os.path.expanduser(location)
    if data_dir and not os.path.isabs(path):
        path = os.path.join(os.path.expanduser(os.fspath(data_dir)), path)
    return path


def read(dataset, data_dir, options):
    """Reads the source `dataset` (``"KIND:LOCATION"``) into a `Source`."""
    kind, location = parse(dataset)
    validate(options, kind)
    if kind == "npz":
        return read_npz(resolve(location, data_dir))
    if kind == "images":
        return read_images(resolve(location, data_dir), tuple(options.image_size), options.color_mode)
    if kind == "tfrecord":
        return read_tfrecord(resolve(location, data_dir), options.tfrecord)
    return read_tfds(location, data_dir)


def read_npz(path):
    """The four arrays of a Keras-style `.npz` file."""
    if not os.path.isfile(path):
        raise DataError(f"The dataset file '{path}' does not exist. Fix the path in dataset='npz:...' "
                        "(a relative path is read from data_dir), or write the file with "
                        "tools/write_dataset.py or numpy.savez(path, x_train=..., y_train=..., "
                        "x_test=..., y_test=...).")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DataError(f"'{path}' holds a single array, not a .npz of named arrays: save it "
                                "with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
            missing = [k for k in SPLITS if k not in f.files]
            if missing:
                raise DataError(f"'{path}' has no array {', '.join(missing)}; it holds {sorted(f.files)}. "
                                "A dataset .npz holds x_train, y_train, x_test and y_test: save it with "
                                "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
            arrays = {k: f[k] for k in SPLITS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"Could not read '{path}' as a .npz file ({type(e).__name__}: {e}). The file is "
                        "damaged or not a NumPy .npz (object arrays are refused): write it again with "
                        "numpy.savez or tools/write_dataset.py.") from e
    return Source(arrays, {k: f"'{path}' (array {k!r})" for k in SPLITS})


def _message(error):
    """A TensorFlow error's message without the graph's node names."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[\[\{\{node [^\]]*\]\]", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*", "", text)
    return text.strip()


def _class_folders(folder, split):
    path = os.path.join(folder, split)
    if not os.path.isdir(path):
        raise DataError(f"The image folder '{folder}' has no '{split}' subfolder. Expected "
                        f"'{folder}/train/<class>/*.png' and '{folder}/test/<class>/*.png' (the "
                        "keras.utils.image_dataset_from_directory layout; tools/write_dataset.py "
                        "--format=images writes it).")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise DataError(f"'{path}' has no class folders: put each class's images in a folder of "
                        f"its own, '{path}/<class>/'.")
    for name in classes:
        count = sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(
            os.path.join(path, name), followlinks=True) for f in files)
        if not count:
            raise DataError(f"The class folder '{os.path.join(path, name)}' holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}): add its images, or remove the folder.")
    return classes


def _bad_image(paths, channels):
    """The first of `paths` that does not decode (the diagnosis after a failed read)."""
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            return path, _message(e)
    return None, None


def read_images(folder, image_size, color_mode):
    """The images of `folder/train` and `folder/test`, as uint8 arrays."""
    if not os.path.isdir(folder):
        raise DataError(f"The image folder '{folder}' does not exist. Fix the path in "
                        "dataset='images:...' (a relative path is read from data_dir).")
    classes = _class_folders(folder, "train")
    test_classes = _class_folders(folder, "test")
    if test_classes != classes:
        raise DataError(
            f"The class folders of '{folder}/test' ({test_classes}) are not those of "
            f"'{folder}/train' ({classes}): both splits need the same class folders, which give "
            "the labels (sorted by name).")
    import keras

    channels = COLOR_MODES[color_mode]
    image_size = tuple(image_size) or _size_of(os.path.join(folder, "train"))
    arrays, where = {}, {}
    for split in ("train", "test"):
        directory = os.path.join(folder, split)
        ds = keras.utils.image_dataset_from_directory(
            directory, labels="inferred", label_mode="int", class_names=classes,
            color_mode=color_mode, batch_size=256, image_size=image_size,
            shuffle=False, verbose=False)
        paths = list(ds.file_paths)
        try:
            batches = [(np.clip(np.round(x), 0, 255).astype(np.uint8), y)
                       for x, y in ds.as_numpy_iterator()]
        except tf.errors.OpError as e:
            path, why = _bad_image(paths, channels)
            raise DataError(f"Could not decode the image '{path or directory}' ({why or _message(e)}). "
                            "The file is damaged or not an image: replace or remove it.") from e
        arrays[f"x_{split}"] = np.concatenate([b[0] for b in batches])
        arrays[f"y_{split}"] = np.concatenate([b[1] for b in batches]).astype(np.int64)
        where[f"x_{split}"] = where[f"y_{split}"] = f"'{directory}'"
    return Source(arrays, where, num_classes=len(classes))


def _size_of(directory):
    """(height, width) of the first image under `directory` (image_size=():
    every image is resized to it)."""
    first = min(os.path.join(root, f) for root, _, files in os.walk(directory, followlinks=True)
                for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    try:
        image = tf.io.decode_image(tf.io.read_file(first), expand_animations=False)
    except tf.errors.OpError as e:
        raise DataError(f"Could not decode the image '{first}' ({_message(e)}). The file is damaged "
                        "or not an image: replace or remove it.") from e
    return tuple(int(s) for s in image.shape[:2])


def _parser(spec):
    """A `tf.train.Example` -> (x, y) function for the feature spec `spec`."""
    x_shape, y_shape = tuple(spec["x_shape"]), tuple(spec["y_shape"])
    dtypes = {"float32": tf.float32, "int64": tf.int64}
    features = {
        spec["x_feature"]: (tf.io.FixedLenFeature([], tf.string) if spec["x_dtype"] in ("image", "uint8")
                            else tf.io.FixedLenFeature(x_shape, dtypes[spec["x_dtype"]])),
        spec["y_feature"]: tf.io.FixedLenFeature(y_shape, dtypes[spec["y_dtype"]]),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        x = example[spec["x_feature"]]
        if spec["x_dtype"] == "image":
            x = tf.io.decode_image(x, channels=x_shape[-1], expand_animations=False)
            x = tf.ensure_shape(x, x_shape)
        elif spec["x_dtype"] == "uint8":
            x = tf.reshape(tf.io.decode_raw(x, tf.uint8), x_shape)
        return x, example[spec["y_feature"]]
    return parse


def _read_records(files, parse):
    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    batches = list(ds.batch(1024).as_numpy_iterator())
    if not batches:
        return None
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def read_tfrecord(pattern, spec):
    """The records of the files matching `pattern` (``{split}``: train, test)."""
    parse = _parser(spec)
    arrays, where = {}, {}
    for split in ("train", "test"):
        split_pattern = pattern.replace("{split}", split)
        files = sorted(glob.glob(split_pattern))
        if not files:
            raise DataError(f"No TFRecord file matches '{split_pattern}' (the {split} split of "
                            f"dataset='tfrecord:{pattern}'). Fix the pattern (a relative one is read "
                            "from data_dir); '{split}' stands for 'train' and 'test'.")
        try:
            read = _read_records(files, parse)
        except tf.errors.OpError as e:
            bad, why = files[0], _message(e)
            for path in files:  # the diagnosis: which file fails
                try:
                    _read_records([path], parse)
                except tf.errors.OpError as err:
                    bad, why = path, _message(err)
                    break
            raise DataError(
                f"Could not read the TFRecord file '{bad}' with the feature spec "
                f"tfrecord={dict(spec)} ({why}). The file is damaged, or the spec does not "
                "match its tf.train.Example records: set tfrecord.x_feature / x_dtype / x_shape and "
                "tfrecord.y_feature / y_dtype / y_shape to the records' features.") from e
        if read is None:
            raise DataError(f"The TFRecord files {files} hold no records: write the {split} split "
                            "again.")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = read
        where[f"x_{split}"] = where[f"y_{split}"] = f"'{split_pattern}'"
    return Source(arrays, where)


def read_tfds(name, data_dir):
    """The train and test splits of a TFDS dataset prepared in `data_dir`."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"dataset='tfds:{name}' reads a TensorFlow Datasets dataset, and "
                        "tensorflow_datasets is not installed: pip install tensorflow-datasets "
                        "(selfcompress does not depend on it).") from e
    where = f"data_dir='{data_dir}'" if data_dir else "the default TFDS folder (~/tensorflow_datasets)"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # unknown name or version: tfds' own error types vary
        raise DataError(f"TensorFlow Datasets cannot open {name!r} in {where} ({type(e).__name__}: "
                        f"{e}). Check the name (NAME, NAME/CONFIG or NAME:VERSION).") from e
    if not prepared:
        raise DataError(f"The TensorFlow Datasets dataset {name!r} is not prepared in {where}; it is "
                        "never downloaded at run time. Prepare it once where there is internet "
                        f"(`tfds build {name} --data_dir=DIR`, or tfds.load({name!r}, data_dir=DIR)), "
                        "copy DIR here and set data_dir=DIR.")
    info = builder.info
    missing = [s for s in ("train", "test") if s not in info.splits]
    if missing:
        raise DataError(f"The TensorFlow Datasets dataset {name!r} has no split {missing}; it has "
                        f"{sorted(info.splits)}. Only datasets with 'train' and 'test' splits are read.")
    if not info.supervised_keys:
        raise DataError(f"The TensorFlow Datasets dataset {name!r} has no (input, label) pair "
                        "(supervised_keys): it cannot be read as x, y.")
    arrays = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        batches = list(ds.batch(1024).as_numpy_iterator())
        arrays[f"x_{split}"] = np.concatenate([b[0] for b in batches])
        arrays[f"y_{split}"] = np.concatenate([b[1] for b in batches])
    label = info.features[info.supervised_keys[1]]
    num_classes = getattr(label, "num_classes", None)
    return Source(arrays, {k: f"TFDS {name!r} in {where} ({k[2:]} split)" for k in SPLITS},
                  num_classes=num_classes)


def write_npz(arrays, path):
    """Writes `arrays` (x_train, ..., y_test) as a Keras-style .npz, atomically."""
    from selfcompress import checkpoint

    checkpoint.atomic_write(path, lambda tmp: np.savez_compressed(tmp, **{k: arrays[k] for k in SPLITS}))


def write_image_folder(arrays, folder, num_classes):
    """Writes `arrays` as PNGs in `folder/{train,test}/<class>/<index>.png`.

    Class folders are the labels zero-padded to one width (``0``..``9``, or
    ``00``..``99``), so their sorted order is the label order. The images are
    encoded and written by a `tf.data` pipeline (in parallel) into a temporary
    folder next to `folder`, which is then renamed into place.
    """
    for split in ("train", "test"):
        missing = sorted(set(range(num_classes)) - set(np.asarray(arrays[f"y_{split}"]).tolist()))
        if missing:
            raise DataError(f"class {missing[0]} has no {split} example, so its {split} class folder "
                            "would be empty: write more examples (or all of them).")
    width = len(str(max(num_classes - 1, 0)))
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-images-")

    def write(name, image):
        with tf.control_dependencies([tf.io.write_file(name, tf.io.encode_png(image))]):
            return tf.identity(name)

    try:
        for split in ("train", "test"):
            x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"]).astype(np.int64)
            if x.ndim == 3:
                x = x[..., np.newaxis]
            for label in range(num_classes):
                os.makedirs(os.path.join(tmp, split, f"{label:0{width}d}"), exist_ok=True)
            digits = len(str(max(len(x) - 1, 0)))
            names = [os.path.join(tmp, split, f"{label:0{width}d}", f"{i:0{digits}d}.png")
                     for i, label in enumerate(y)]
            ds = tf.data.Dataset.from_tensor_slices((names, x)).map(
                write, num_parallel_calls=tf.data.AUTOTUNE)
            ds.reduce(np.int64(0), lambda n, _: n + 1)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
