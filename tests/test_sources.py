"""Datasets from files (`selfcompress.sources`): .npz, image folders, TFRecord
and TFDS, their preprocessing and augmentation, regression, and every bad input
a user can give them. All files are small and generated in `tmp_path`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from test_data import tiny_arrays, write_dataset_dir

from selfcompress import config as config_lib
from selfcompress import data, errors, pipeline, sources, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arrays(n_train=40, n_test=12, shape=(8, 8), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
            "y_train": np.arange(n_train) % classes,
            "x_test": rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
            "y_test": np.arange(n_test) % classes}


def config(dataset, **fields):
    c = config_lib.base()
    c.dataset = dataset
    for key, value in fields.items():
        if "." in key:
            group, name = key.split(".")
            c[group][name] = value
        else:
            c[key] = value
    return c


def load(c, **kwargs):
    return data.from_config(c, **kwargs)


def batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


# --- .npz -------------------------------------------------------------------

def test_npz_loads_like_the_builtin_datasets(tmp_path):
    a = arrays()
    np.savez(tmp_path / "d.npz", **a)
    ds = load(config("npz:d.npz", data_dir=str(tmp_path), batch_size=8), first_epoch=0)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 3
    assert (ds.num_train, ds.num_validation, ds.num_test) == (36, 4, 12)  # 10% held out
    x, y = next(iter(ds.test))
    assert x.shape == (8, 8, 8, 1) and y.dtype == tf.int32
    np.testing.assert_allclose(x.numpy()[..., 0], (a["x_test"][:8] / 255.0 - ds.mean) / ds.std, rtol=1e-5,
                               atol=1e-5)
    # The same file by absolute path; the hold-out follows the seed.
    same = load(config(f"npz:{tmp_path / 'd.npz'}", batch_size=8, num_validation=10, seed=1))
    other = load(config(f"npz:{tmp_path / 'd.npz'}", batch_size=8, num_validation=10, seed=2))
    assert same.num_validation == 10
    val = np.concatenate([b[1] for b in batches(same.validation, 9)])
    assert not np.array_equal(val, np.concatenate([b[1] for b in batches(other.validation, 9)]))


def test_npz_with_feature_vectors_and_float_inputs(tmp_path):
    rng = np.random.default_rng(0)
    a = {"x_train": rng.normal(size=(30, 5)).astype(np.float32), "y_train": np.arange(30) % 2,
         "x_test": rng.normal(size=(10, 5)).astype(np.float32), "y_test": np.arange(10) % 2}
    np.savez(tmp_path / "v.npz", **a)
    ds = load(config(f"npz:{tmp_path / 'v.npz'}", standardize=False, batch_size=10))
    assert ds.input_shape == (5,) and ds.num_classes == 2
    x, _ = next(iter(ds.test))
    np.testing.assert_array_equal(x.numpy(), a["x_test"])  # floats are kept as stored
    scaled = load(config(f"npz:{tmp_path / 'v.npz'}", standardize=False, rescale=0.5, batch_size=10))
    np.testing.assert_allclose(next(iter(scaled.test))[0].numpy(), a["x_test"] * 0.5)


@pytest.mark.parametrize("problem, match", [
    ("missing", "does not exist.*write_dataset"),
    ("garbage", "Could not read .* as a .npz file"),
    ("truncated", "Could not read .* as a .npz file"),
    ("keys", "has no array y_test.*numpy.savez"),
    ("lengths", "expected train inputs of shape .N, ....* and N labels"),
    ("shapes", "training inputs have shape .8, 8. and the test inputs .9, 9."),
    ("empty", "N > 0"),
    ("nan", "NaN or infinite"),
    ("strings", "inputs must be numbers"),
    ("float_labels", "class labels must be integers.*loss='mse'"),
    ("negative", r"Bad label values: -1\."),
    ("num_classes", r"outside the valid range \[0, 1\].*Bad label values: 2\."),
])
def test_npz_bad_inputs_are_named(tmp_path, problem, match):
    a, path, fields = arrays(), tmp_path / "d.npz", {}
    if problem == "keys":
        del a["y_test"]
    elif problem == "lengths":
        a["y_train"] = a["y_train"][:-1]
    elif problem == "shapes":
        a["x_test"] = np.zeros((12, 9, 9), np.uint8)
    elif problem == "empty":
        a["x_test"], a["y_test"] = a["x_test"][:0], a["y_test"][:0]
    elif problem == "nan":
        a["x_train"] = a["x_train"].astype(np.float32)
        a["x_train"][3, 2, 1] = np.nan
    elif problem == "strings":
        a["x_train"] = np.array(["a"] * 40)[:, None]
    elif problem == "float_labels":
        a["y_train"] = a["y_train"] + 0.5
    elif problem == "negative":
        a["y_train"][5] = -1
    elif problem == "num_classes":
        fields["num_classes"] = 2
    if problem != "missing":
        np.savez(path, **a)
    if problem == "garbage":
        path.write_bytes(b"this is not a zip file at all")
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(errors.DataError, match=match) as info:
        load(config(f"npz:{path}", **fields))
    assert str(path) in str(info.value) or problem == "shapes"


# --- image folders ----------------------------------------------------------

def test_image_folder_reads_every_png_with_its_class(tmp_path):
    a = arrays()
    sources.write_image_folder(a, str(tmp_path / "img"), 3)
    assert sorted(os.listdir(tmp_path / "img" / "test")) == ["0", "1", "2"]
    c = config("images:img", data_dir=str(tmp_path), color_mode="grayscale", num_validation=0, batch_size=64)
    src = sources.read(c.dataset, c.data_dir, data.options_from(c))
    # Files come in class order, then name order: the arrays sorted stably by label.
    order = np.argsort(a["y_train"], kind="stable")
    np.testing.assert_array_equal(src.arrays["x_train"][..., 0], a["x_train"][order])
    np.testing.assert_array_equal(src.arrays["y_train"], a["y_train"][order])
    ds = load(c, first_epoch=0)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 3 and ds.num_train == 40
    rgb = load(config("images:img", data_dir=str(tmp_path), image_size=(12, 10), num_validation=0))
    assert rgb.input_shape == (12, 10, 3)


def test_image_folder_with_rgb_images_and_augmentation(tmp_path):
    import keras
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for label in ("cat", "dog"):
            os.makedirs(tmp_path / split / label)
            for i in range(n):
                keras.utils.save_img(str(tmp_path / split / label / f"{i}.png"),
                                     rng.integers(0, 256, (6, 6, 3)).astype(np.uint8), scale=False)
    c = config(f"images:{tmp_path}", random_flip=True, random_crop_padding=1, num_validation=2, batch_size=4)
    ds = load(c, first_epoch=0)
    assert ds.input_shape == (6, 6, 3) and ds.num_classes == 2
    x, y = next(iter(ds.train))
    assert x.shape == (4, 6, 6, 3) and set(y.numpy()) <= {0, 1}


@pytest.mark.parametrize("problem, match", [
    ("missing", "image folder .* does not exist"),
    ("no_test", "has no 'test' subfolder"),
    ("no_classes", "has no class folders"),
    ("empty_class", "class folder .*train.2' holds no images"),
    ("classes_differ", "class folders of .*test.*are not those of"),
    ("corrupt", r"Could not decode the image '.*train.1.01\.png' \(Unknown image file format"),
])
def test_image_folder_bad_inputs_are_named(tmp_path, problem, match):
    folder = tmp_path / "img"
    if problem != "missing":
        sources.write_image_folder(arrays(n_train=12), str(folder), 3)
    if problem == "no_test":
        os.rename(folder / "test", folder / "tst")
    elif problem == "no_classes":  # the images straight in train/
        for name in ("0", "1", "2"):
            for f in os.listdir(folder / "train" / name):
                os.rename(folder / "train" / name / f, folder / "train" / f"{name}_{f}")
            (folder / "train" / name).rmdir()
    elif problem == "empty_class":
        for f in os.listdir(folder / "train" / "2"):
            os.remove(folder / "train" / "2" / f)
    elif problem == "classes_differ":
        os.rename(folder / "test" / "2", folder / "test" / "9")
    elif problem == "corrupt":
        (folder / "train" / "1" / min(os.listdir(folder / "train" / "1"))).write_bytes(b"\x89PNG broken")
    with pytest.raises(errors.DataError, match=match):
        load(config(f"images:{folder}", color_mode="grayscale"))


# --- TFRecord ---------------------------------------------------------------

def _feature(value):
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    value = np.asarray(value).ravel()
    if np.issubdtype(value.dtype, np.integer):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value.tolist()))
    return tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))


def write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features in examples:
            writer.write(tf.train.Example(features=tf.train.Features(
                feature={k: _feature(v) for k, v in features.items()})).SerializeToString())


def test_tfrecord_png_images_and_raw_float_vectors(tmp_path):
    a = arrays()
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        half = len(x) // 2  # two shards per split
        for shard, part in enumerate((slice(0, half), slice(half, None))):
            write_records(tmp_path / f"{split}-{shard}.tfrecord",
                          [{"image": tf.io.encode_png(img[..., None]).numpy(), "label": int(label)}
                           for img, label in zip(x[part], y[part])])
    c = config("tfrecord:{split}-*.tfrecord", data_dir=str(tmp_path), num_validation=0, batch_size=64)
    c.tfrecord.x_shape = (8, 8, 1)
    src = sources.read(c.dataset, c.data_dir, data.options_from(c))
    np.testing.assert_array_equal(src.arrays["x_train"][..., 0], a["x_train"])
    np.testing.assert_array_equal(src.arrays["y_test"], a["y_test"])
    ds = load(c, first_epoch=0)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 3 and ds.num_train == 40

    # Raw float features with a float target (regression), and raw uint8 bytes.
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        write_records(tmp_path / f"vec_{split}.rec",
                      [{"x": rng.normal(size=4).astype(np.float32), "raw": rng.integers(0, 256, 6, dtype=np.uint8)
                        .tobytes(), "y": np.float32(i)} for i in range(10)])
    vec = config("tfrecord:vec_{split}.rec", data_dir=str(tmp_path), loss="mse", metrics=("mae",))
    vec.tfrecord.x_feature, vec.tfrecord.x_dtype, vec.tfrecord.x_shape = "x", "float32", (4,)
    vec.tfrecord.y_feature, vec.tfrecord.y_dtype = "y", "float32"
    ds = load(vec)
    assert ds.input_shape == (4,) and ds.num_classes == 1
    _, y = next(iter(ds.test))
    assert y.dtype == tf.float32 and y.shape == (10, 1)
    vec.tfrecord.x_feature, vec.tfrecord.x_dtype, vec.tfrecord.x_shape = "raw", "uint8", (2, 3)
    assert load(vec).input_shape == (2, 3, 1)  # uint8 (H, W): a grayscale image


@pytest.mark.parametrize("problem, match", [
    ("no_files", r"No TFRecord file matches '.*test-\*\.tfrecord'"),
    ("feature_name", r"'.*train-0\.tfrecord' with the feature spec.*Feature: img .*required"),
    ("shape", r"'.*train-0\.tfrecord'.*x_shape.*to the records' features"),
    ("corrupt", r"Could not read the TFRecord file '.*train-1\.tfrecord'"),
    ("empty", "hold no records"),
])
def test_tfrecord_bad_inputs_are_named(tmp_path, problem, match):
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    records = [{"image": tf.io.encode_png(img).numpy(), "label": 1} for img in x]
    write_records(tmp_path / "train-0.tfrecord", records)
    write_records(tmp_path / "train-1.tfrecord", records)
    if problem != "no_files":
        write_records(tmp_path / "test-0.tfrecord", [] if problem == "empty" else records)
    if problem == "corrupt":
        raw = (tmp_path / "train-1.tfrecord").read_bytes()
        (tmp_path / "train-1.tfrecord").write_bytes(raw[:-20])
    c = config(f"tfrecord:{tmp_path}/{{split}}-*.tfrecord")
    c.tfrecord.x_shape = (8, 9, 1) if problem == "shape" else (8, 8, 1)
    if problem == "feature_name":
        c.tfrecord.x_feature = "img"
    with pytest.raises(errors.DataError, match=match):
        load(c)


# --- TensorFlow Datasets ------------------------------------------------------

def test_tfds_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(errors.DataError, match="pip install tensorflow-datasets"):
        load(config("tfds:mnist"))


def test_tfds_dataset_prepared_in_data_dir(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyDigits(tfds.core.GeneratorBasedBuilder):
        """Eight 4x4 images per split, made here: nothing is downloaded."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(4, 4, 1)),
                    "label": tfds.features.ClassLabel(num_classes=5)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0), "test": self._generate_examples(100)}

        def _generate_examples(self, offset):
            for i in range(8):
                yield offset + i, {"image": np.full((4, 4, 1), 10 * i, np.uint8), "label": i % 3}

    with pytest.raises(errors.DataError, match="not prepared .*never downloaded"):
        load(config("tfds:tiny_digits", data_dir=str(tmp_path)))
    TinyDigits(data_dir=str(tmp_path)).download_and_prepare()
    ds = load(config("tfds:tiny_digits", data_dir=str(tmp_path), num_validation=0, batch_size=8))
    assert ds.input_shape == (4, 4, 1) and ds.num_classes == 5 and ds.num_train == 8
    with pytest.raises(errors.DataError, match="cannot open 'no_such_dataset'"):
        load(config("tfds:no_such_dataset", data_dir=str(tmp_path)))


# --- augmentation and resuming ----------------------------------------------

def test_augmented_epochs_resume_exactly_and_differ(tmp_path):
    np.savez(tmp_path / "d.npz", **arrays(n_train=40))
    c = config(f"npz:{tmp_path / 'd.npz'}", random_flip=True, random_crop_padding=2, batch_size=8,
               num_validation=8, seed=3)
    steps = 4  # 32 training examples / 8
    stream = batches(load(c, first_epoch=0).train, 3 * steps)
    resumed = batches(load(c, first_epoch=2).train, steps)
    for (x1, y1), (x2, y2) in zip(stream[2 * steps:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(stream[0][0], stream[steps][0])
    again = batches(load(c).train_from(1), steps)
    np.testing.assert_array_equal(again[0][0], stream[steps][0])


def test_flip_and_crop_move_pixels_only():
    x = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    y = np.arange(2)
    stream = list(pipeline.make_dataset(x, y, 2, training=True, first_epoch=0, flip=True,
                                        seed=0).take(8).as_numpy_iterator())
    flipped, labels = np.concatenate([b[0] for b in stream]), np.concatenate([b[1] for b in stream])
    originals = x[labels][..., None] / 255.0  # each label is its example's index
    same = [np.allclose(i, o) for i, o in zip(flipped, originals)]
    mirrored = [np.allclose(i, o[:, ::-1]) for i, o in zip(flipped, originals)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)
    # One example, one batch per epoch: every epoch draws its flip anew.
    one = [b[0] for b in pipeline.make_dataset(x[:1], y[:1], 1, training=True, first_epoch=0, flip=True,
                                               seed=0).take(16).as_numpy_iterator()]
    assert 1 < len({image.tobytes() for image in one})
    cropped = next(pipeline.make_dataset(x, y, 2, training=True, first_epoch=0, crop_padding=1,
                                         seed=0).as_numpy_iterator())[0]
    padded = np.pad(x[..., None] / 255.0, [(0, 0), (1, 1), (1, 1), (0, 0)])
    for image in cropped:
        assert any(np.allclose(image, padded[k, i:i + 4, j:j + 5]) for k in range(2) for i in range(3)
                   for j in range(3))
    with pytest.raises(errors.ConfigError, match="need images"):
        pipeline.make_dataset(np.zeros((4, 3), np.float32), np.arange(4), 2, training=True, flip=True)


# --- regression -------------------------------------------------------------

def test_regression_trains_with_mse_and_reports_its_metric(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 1))
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = (x @ w + 0.5).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x[:500], y_train=y[:500, 0], x_test=x[500:], y_test=y[500:, 0])
    c = config(f"npz:{tmp_path / 'reg.npz'}", loss="mse", metrics=("mae",), model="mlp", epochs=3,
               batch_size=32, learning_rate=1e-2, verbose=0, num_validation=50, standardize=False,
               gamma=0.001)
    c.model_kwargs.hidden = (16,)
    results = training.train_and_evaluate(c, str(tmp_path / "run"))
    assert "test_accuracy" not in results and "val_accuracy" not in results
    assert results["val_mae"] is not None and results["test_loss"] > 0
    with open(tmp_path / "run" / "metrics.json") as f:
        history = json.load(f)
    assert history[-1]["loss"] < history[0]["loss"] and "mae" in history[0]
    assert results["test_mae"] < np.abs(y[500:] - y[:500].mean()).mean()  # beats the mean
    with open(tmp_path / "run" / "results.json") as f:
        saved = json.load(f)
    assert saved["test_mae"] == results["test_mae"]


@pytest.mark.parametrize("fields, match", [
    ({"loss": "cross_entropy"}, "loss='cross_entropy': must be one of"),
    ({"metrics": ("accuracy", "nope")}, "does not know the metric 'nope'"),
    ({"metrics": ()}, "metrics=\\(\\): give a tuple"),
    ({"loss": "mse"}, "'accuracy' counts correct classes"),
    ({"dataset": "csv:data.csv"}, "dataset='csv:data.csv': must be a built-in name"),
    ({"dataset": "tfrecord:data.tfrecord"}, "must contain '\\{split\\}'"),
    ({"dataset": "images:x", "color_mode": "cmyk"}, "color_mode='cmyk'"),
    ({"dataset": "images:x", "image_size": (32,)}, "image_size=\\(32,\\)"),
    ({"dataset": "tfrecord:{split}.rec", "tfrecord.x_dtype": "png"}, "tfrecord.x_dtype='png'"),
    ({"dataset": "tfrecord:{split}.rec"}, "tfrecord.x_shape=\\(\\)"),
    ({"random_crop_padding": -1}, "random_crop_padding=-1"),
    ({"rescale": 0.0}, "rescale=0.0"),
    ({"num_classes": 0}, "num_classes=0"),
])
def test_bad_data_and_loss_fields_are_refused_before_anything_runs(tmp_path, fields, match):
    c = config(fields.pop("dataset", "digits"), **fields)
    with pytest.raises(errors.ConfigError, match=match):
        training.validate(c)
    with pytest.raises(errors.ConfigError, match=match):
        training.train_and_evaluate(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


# --- tools/write_dataset.py -------------------------------------------------

def test_writing_npz_and_png_folders(tmp_path):
    a = arrays(n_train=9, n_test=6)
    sources.write_npz(a, str(tmp_path / "d.npz"))
    with np.load(tmp_path / "d.npz") as f:
        for key in a:
            np.testing.assert_array_equal(f[key], a[key])
    a["y_test"][:] = 0  # class 1 and 2 have no test image: no valid folder
    with pytest.raises(errors.DataError, match="class 1 has no test example"):
        sources.write_image_folder(a, str(tmp_path / "png"), 3)
    assert os.listdir(tmp_path) == ["d.npz"]  # nothing half-written


def test_write_dataset_tool(tmp_path):
    a = tiny_arrays(n_train=20, n_test=10)
    a["y_train"], a["y_test"] = np.arange(20, dtype=np.uint8) % 10, np.arange(10, dtype=np.uint8)
    write_dataset_dir(str(tmp_path / "idx"), a)
    tool = [sys.executable, os.path.join(REPO, "tools", "write_dataset.py"), "--dataset=mnist",
            f"--data_dir={tmp_path / 'idx'}", "--noverify_checksums"]
    done = subprocess.run(tool + ["--format=images", f"--output={tmp_path / 'png'}"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Wrote 20 training and 10 test images (28x28, mnist)" in done.stdout
    c = config(f"images:{tmp_path / 'png'}", color_mode="grayscale")
    src = sources.read(c.dataset, None, data.options_from(c))
    order = np.argsort(a["y_train"], kind="stable")
    np.testing.assert_array_equal(src.arrays["x_train"][..., 0], a["x_train"][order])
    np.testing.assert_array_equal(src.arrays["y_train"], a["y_train"][order])
    again = subprocess.run(tool + ["--format=images", f"--output={tmp_path / 'png'}"], capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 1 and "exists. Pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
