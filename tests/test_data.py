"""Tests for `selfcompress.data` (offline; tiny synthetic files in `tmp_path`)."""

import gzip
import os
import struct

import numpy as np
import pytest

from selfcompress import data
from selfcompress.data import DataError

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array):
    """Serialises `array` in the IDX format (big-endian)."""
    array = np.asarray(array)
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress=True):
    payload = idx_bytes(array)
    path = str(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
    return path


def tiny_arrays(n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_dataset_dir(directory, arrays):
    names = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
    os.makedirs(directory, exist_ok=True)
    for key, fname in names.items():
        write_idx(os.path.join(directory, fname), arrays[key])
    return directory


# --- read_idx -------------------------------------------------------------

def test_read_idx_gz_roundtrip(tmp_path):
    images = tiny_arrays()["x_train"]
    out = data.read_idx(write_idx(tmp_path / "images.gz", images))
    assert out.dtype == np.uint8 and out.shape == (12, 28, 28)
    np.testing.assert_array_equal(out, images)
    labels = np.arange(12, dtype=np.uint8) % 10
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "labels.gz", labels)), labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_raw_other_dtypes(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = data.read_idx(write_idx(tmp_path / "a.idx", array, compress=False))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_truncated(tmp_path):
    payload = idx_bytes(tiny_arrays()["x_train"])
    path = tmp_path / "trunc.gz"
    path.write_bytes(gzip.compress(payload[:-100]))
    with pytest.raises(DataError, match="truncated") as info:
        data.read_idx(path)
    assert str(path) in str(info.value) and "download" in str(info.value)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "head.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "trail.idx"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8)) + b"junk")
    with pytest.raises(DataError, match="trailing"):
        data.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(tiny_arrays()["x_train"])))
    for name, blob in [("cut.gz", bytes(compressed[: len(compressed) // 2])),
                       ("garbage.gz", b"\x1f\x8b" + b"\xff" * 64),
                       ("notgzip.gz", b"hello world, not gzip")]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(DataError, match="gzip") as info:
            data.read_idx(path)
        assert name in str(info.value)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "magic.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(DataError, match="magic"):
        data.read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(DataError, match="dtype code"):
        data.read_idx(path)


# --- load_arrays ----------------------------------------------------------

def test_load_arrays_from_idx_dir_and_checksum(tmp_path):
    arrays = tiny_arrays()
    directory = write_dataset_dir(str(tmp_path / "mnist"), arrays)
    with pytest.raises(DataError, match="[Cc]hecksum") as info:
        data.load_arrays("mnist", directory)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message or "train-images-idx3-ubyte.gz" in message
    assert data.SPECS["mnist"].sha256["t10k-images-idx3-ubyte.gz"] in message or \
        data.SPECS["mnist"].sha256["train-images-idx3-ubyte.gz"] in message
    out = data.load_arrays("mnist", directory, verify_checksums=False)
    for key, value in arrays.items():
        np.testing.assert_array_equal(out[key], value)
    assert out["x_train"].dtype == np.uint8 and np.issubdtype(out["y_train"].dtype, np.integer)


def test_load_arrays_npz(tmp_path):
    arrays = tiny_arrays()
    np.savez(tmp_path / "mnist.npz", **arrays)
    out = data.load_arrays("mnist", tmp_path, verify_checksums=False)
    for key, value in arrays.items():
        np.testing.assert_array_equal(out[key], value)
    with pytest.raises(DataError, match="[Cc]hecksum"):
        data.load_arrays("mnist", tmp_path)


def test_load_arrays_npz_in_keras_cache(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    os.makedirs(tmp_path / "datasets")
    np.savez(tmp_path / "datasets" / "mnist.npz", **arrays)  # where keras.datasets.mnist keeps it
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    out = data.load_arrays("mnist", verify_checksums=False)
    np.testing.assert_array_equal(out["y_test"], arrays["y_test"])
    with pytest.raises(DataError, match="download=True"):
        data.load_arrays("fashion_mnist")


def test_load_arrays_missing_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        data.load_arrays("fashion_mnist", tmp_path / "nope")
    assert "download=True" in str(info.value)


def test_load_arrays_missing_files(tmp_path, monkeypatch):
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="download=True") as info:
        data.load_arrays("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and str(tmp_path) in str(info.value)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(DataError, match="download=True") as info:
        data.load_arrays("fashion_mnist")
    assert os.path.join("keras_home", "datasets", "fashion-mnist") in str(info.value)


def test_load_arrays_keras_cache_and_download(tmp_path, monkeypatch):
    """The Keras cache is searched; `download=True` fetches via keras.utils.get_file."""
    import keras

    arrays = tiny_arrays()
    source = write_dataset_dir(str(tmp_path / "source"), arrays)
    calls = []

    def fake_get_file(fname, origin, file_hash, cache_dir, cache_subdir):
        calls.append(origin)
        target = os.path.join(cache_dir, cache_subdir, fname)
        with open(os.path.join(source, fname), "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        return target

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    out = data.load_arrays("fashion_mnist", verify_checksums=False, download=True)
    np.testing.assert_array_equal(out["x_test"], arrays["x_test"])
    assert len(calls) == 4 and all(c.startswith(data.SPECS["fashion_mnist"].base_url) for c in calls)
    assert os.path.isfile(tmp_path / "home" / "datasets" / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    # Second call: found in the cache, no download.
    data.load_arrays("fashion_mnist", verify_checksums=False, download=True)
    assert len(calls) == 4


def test_load_arrays_unknown_name():
    with pytest.raises(ValueError, match="cifar"):
        data.load_arrays("cifar")


def test_digits_offline():
    out = data.load_arrays("digits")
    assert out["x_train"].shape == (1437, 8, 8) and out["x_test"].shape == (360, 8, 8)
    assert out["y_train"].shape == (1437,) and out["y_test"].shape == (360,)
    assert out["x_train"].dtype == np.uint8 and out["x_train"].max() == 255
    assert set(np.unique(out["y_test"])) == set(range(10))
    np.testing.assert_array_equal(out["x_train"], data.load_arrays("digits")["x_train"])
    assert "digits" in data.DATASETS and "mnist" in data.DATASETS and "fashion_mnist" in data.DATASETS


# --- split_validation / pipelines ------------------------------------------

def test_split_validation():
    x = np.arange(100).reshape(100, 1, 1).astype(np.uint8)
    y = np.arange(100)
    xt, yt, xv, yv = data.split_validation(x, y, num_validation=20, seed=3)
    assert len(xt) == 80 and len(xv) == 20
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(100))
    np.testing.assert_array_equal(xv[:, 0, 0], yv)
    again = data.split_validation(x, y, num_validation=20, seed=3)
    np.testing.assert_array_equal(again[3], yv)
    assert not np.array_equal(data.split_validation(x, y, 20, seed=4)[3], yv)
    with pytest.raises(ValueError, match="num_validation=100"):
        data.split_validation(x, y, num_validation=100)


def test_dataset_stats():
    x = np.random.default_rng(0).integers(0, 256, (10, 5, 5), dtype=np.uint8)
    mean, std = data.dataset_stats(x)
    assert mean == pytest.approx((x / 255.0).mean()) and std == pytest.approx((x / 255.0).std())


def test_make_dataset_shapes_and_normalisation():
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    y = np.arange(50) % 10
    mean, std = data.dataset_stats(x)
    ds = data.make_dataset(x, y, 16, training=False, mean=mean, std=std)
    images, labels = next(iter(ds))
    assert images.shape == (16, 8, 8, 1) and images.dtype.name == "float32" and labels.dtype.name == "int32"
    allx = np.concatenate([b[0].numpy() for b in ds])
    assert allx.shape == (50, 8, 8, 1)
    assert abs(allx.mean()) < 1e-4 and allx.std() == pytest.approx(1.0, abs=1e-4)
    flat = data.make_dataset(x, y, 16, training=False, flatten=True)
    images, _ = next(iter(flat))
    assert images.shape == (16, 64) and float(images.numpy().max()) <= 1.0
    np.testing.assert_allclose(images.numpy(), x[:16].reshape(16, 64) / 255.0, rtol=1e-6)
    assert len(list(data.make_dataset(x, y, 16, training=True, drop_remainder=True))) == 3


def test_make_dataset_shuffles_only_when_training():
    x = np.zeros((64, 2, 2), np.uint8)
    y = np.arange(64)

    def epoch(ds):
        return np.concatenate([b[1].numpy() for b in ds])

    np.testing.assert_array_equal(epoch(data.make_dataset(x, y, 8, training=False)), y)
    train = data.make_dataset(x, y, 8, training=True, seed=1)
    first, second = epoch(train), epoch(train)
    assert sorted(first.tolist()) == y.tolist()
    assert not np.array_equal(first, y) and not np.array_equal(first, second)
    np.testing.assert_array_equal(epoch(data.make_dataset(x, y, 8, training=True, seed=1)), first)


def test_load_digits_convenience():
    d = data.load("digits", batch_size=32, num_validation=100, seed=0)
    assert d.num_train == 1337 and d.num_validation == 100 and d.num_test == 360
    assert d.input_shape == (8, 8, 1) and d.num_classes == 10
    images, labels = next(iter(d.train))
    assert images.shape == (32, 8, 8, 1)
    d0 = data.load("digits", batch_size=32, num_validation=0, seed=0, flatten=True)
    assert d0.validation is None and d0.input_shape == (64,)
    with pytest.raises(Exception):
        d0.num_train = 5  # frozen


# --- messages that name the actual problem ----------------------------------

def _pretend_official(monkeypatch, name, directory):
    """Registers the files in `directory` as the official files of dataset `name`."""
    import dataclasses

    sums = {f: data.sha256sum(os.path.join(directory, f)) for f in os.listdir(directory)}
    monkeypatch.setitem(data.SPECS, name, dataclasses.replace(data.SPECS[name], sha256=sums))


def test_other_datasets_official_files_are_named_not_called_corrupt(tmp_path, monkeypatch):
    directory = write_dataset_dir(str(tmp_path / "fashion"), tiny_arrays())
    _pretend_official(monkeypatch, "fashion_mnist", directory)
    with pytest.raises(DataError) as info:
        data.load_arrays("mnist", directory)
    message = str(info.value)
    assert "These are the Fashion-MNIST files" in message
    assert "dataset=fashion_mnist" in message and "data_dir" in message and "MNIST files" in message
    assert "corrupt" not in message and "delete it" not in message
    # The same files as what they are load fine.
    assert data.load_arrays("fashion_mnist", directory)["x_train"].shape == (12, 28, 28)


def test_swapped_official_files_are_named(tmp_path, monkeypatch):
    directory = write_dataset_dir(str(tmp_path / "mnist"), tiny_arrays())
    _pretend_official(monkeypatch, "mnist", directory)
    train, test = (os.path.join(directory, f) for f in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
    os.rename(train, train + ".x")
    os.rename(test, train)
    os.rename(train + ".x", test)
    with pytest.raises(DataError, match="swapped or renamed") as info:
        data.load_arrays("mnist", directory)
    assert "corrupt" not in str(info.value)


def test_unknown_checksum_still_says_corrupt(tmp_path):
    directory = write_dataset_dir(str(tmp_path / "mnist"), tiny_arrays())
    with pytest.raises(DataError, match="corrupt or not the official one"):
        data.load_arrays("fashion_mnist", directory)


@pytest.mark.parametrize("split, bad", [("y_train", [10]), ("y_test", [10, 12]), ("y_train", [-1])])
def test_out_of_range_labels_are_reported_at_load(tmp_path, split, bad):
    arrays = tiny_arrays()
    if min(bad) < 0:  # IDX labels are unsigned; signed ones come as int8
        arrays = {k: v.astype(np.int8) if k.startswith("y") else v for k, v in arrays.items()}
    arrays[split][:len(bad)] = bad
    directory = write_dataset_dir(str(tmp_path / "d"), arrays)
    with pytest.raises(ValueError, match=r"valid range \[0, 9\]") as info:
        data.load_arrays("mnist", directory, verify_checksums=False)
    message = str(info.value)
    fname = {"y_train": "train-labels-idx1-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}[split]
    assert fname in message and "'mnist'" in message and "learning rate" not in message
    assert f"Bad label values: {', '.join(str(v) for v in sorted(bad))}." in message
    # The convenience loader stops at the same place, before any training.
    with pytest.raises(ValueError, match="Bad label values"):
        data.load("mnist", directory, verify_checksums=False, num_validation=2)


def test_out_of_range_labels_in_npz_and_non_integer_labels(tmp_path):
    arrays = tiny_arrays()
    arrays["y_test"] = arrays["y_test"].astype(np.int64)
    arrays["y_test"][3] = 255
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"mnist\.npz' \(array 'y_test'\).*Bad label values: 255\."):
        data.load_arrays("mnist", tmp_path, verify_checksums=False)
    with pytest.raises(ValueError, match="integer class indices"):
        data.check_labels(np.array([0.0, 1.5]), 10)
    data.check_labels(np.array([0.0, 9.0]), 10)  # integral floats are fine


# --- configs -----------------------------------------------------------------

def test_from_config_reads_a_config_or_its_record(tmp_path):
    from selfcompress import config as config_lib
    from selfcompress import workdir

    c = config_lib.base()
    c.num_validation, c.batch_size, c.random_flip = 100, 32, True
    direct = data.from_config(c)
    flat = workdir.flat(c)  # as config.json records it
    assert data.options_from(flat) == data.options_from(c)
    del flat["random_flip"], flat["tfrecord.x_shape"]  # a record older than these fields
    assert data.options_from(flat).random_flip is False and data.options_from(flat).tfrecord["x_shape"] == ()
    recorded = data.from_config(workdir.flat(c))
    assert (recorded.num_train, recorded.num_validation, recorded.input_shape) == (1337, 100, (8, 8, 1))
    for (x1, y1), (x2, y2) in zip(direct.test, recorded.test):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    # The defaults of `load` are those of config.base().
    assert data.options_from() == data.options_from(config_lib.base())


@pytest.mark.parametrize("drop", [False, True])
def test_drop_remainder_trains_on_full_batches_only(tmp_path, drop):
    from selfcompress import config as config_lib
    directory = write_dataset_dir(str(tmp_path / "d"), tiny_arrays(n_train=30))
    config = config_lib.base()
    config.drop_remainder = drop
    d = data.load("mnist", directory, batch_size=4, num_validation=3, seed=0, verify_checksums=False,
                  first_epoch=0, options=data.options_from(config))
    assert d.steps_per_epoch == (6 if drop else 7)  # 27 training examples
    sizes = [len(y) for _, y in d.train.take(2 * d.steps_per_epoch)]
    assert sizes == ([4] * 6 + [3] if not drop else [4] * 6) * 2
    # Evaluation keeps every example.
    assert sum(len(y) for _, y in d.validation) == 3 and sum(len(y) for _, y in d.test) == 6
    if drop:
        with pytest.raises(data.DataError, match="drop_remainder leaves no batch"):
            data.load("mnist", directory, batch_size=64, num_validation=3, verify_checksums=False,
                      options=data.options_from(config))
