"""Dataset preparation: real readers on small data the tests make (or that scikit-learn ships)."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from cldsgm.cli import main
from cldsgm.data import load_prepared, prepare, prepared_paths
from cldsgm.oracles import diamond


class TinyCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's real CIFAR-10 parser with the md5 checks off, so a tiny archive in the real format loads.

    Test-only; production uses the stock class with its checksums.
    """

    tgz_md5 = None
    train_list = [[f"data_batch_{i}", None] for i in range(1, 6)]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}


def write_cifar_archive(root, per_batch=4, test=6, seed=0):
    """cifar-10-python.tar.gz with 5 train batches and a test batch in the real pickle format; returns arrays."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    arrays, buffer = {}, io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name, obj):
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for name, count in batches.items():
            data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, count).tolist()
            arrays[name] = (data, labels)
            add(name, {"batch_label": name, "data": data, "labels": labels,
                       "filenames": [f"{name}_{i}.png" for i in range(count)]})
        add("batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                             "num_vis": 3072})
    archive = root / "cifar-10-python.tar.gz"
    archive.write_bytes(buffer.getvalue())
    return archive, arrays


def expected_images(arrays, split):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data = np.concatenate([arrays[n][0] for n in names])
    labels = sum((arrays[n][1] for n in names), [])
    return data.reshape(-1, 3, 32, 32), np.asarray(labels)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("from_archive_path", [False, True])
def test_cifar_round_trip_is_pixel_exact(tmp_path, split, from_archive_path):
    src = tmp_path / "cifar"
    src.mkdir()
    archive, arrays = write_cifar_archive(src)
    manifest = prepare("cifar10", split, tmp_path / "out", source=archive if from_archive_path else src,
                       cifar_class=TinyCIFAR10)
    data, labels, loaded = load_prepared(prepared_paths(tmp_path / "out", "cifar10", split)[0])
    images, targets = expected_images(arrays, split)
    np.testing.assert_array_equal(data, images)
    np.testing.assert_array_equal(labels, targets)
    assert manifest == loaded and manifest["count"] == len(images) and manifest["shape"] == [3, 32, 32]
    # a second split reuses the extracted folder
    other = "test" if split == "train" else "train"
    assert prepare("cifar10", other, tmp_path / "out", source=src, cifar_class=TinyCIFAR10)["count"] > 0


def test_stock_cifar_class_rejects_a_non_genuine_archive(tmp_path):
    """Production checks the archive's md5: the tiny archive is not CIFAR-10, and nothing is written."""
    write_cifar_archive(tmp_path)
    with pytest.raises(ValueError, match="corrupted or truncated"):
        prepare("cifar10", "train", tmp_path / "out", source=tmp_path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_truncated_cifar_archive_leaves_nothing_behind(tmp_path):
    archive, _ = write_cifar_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        prepare("cifar10", "train", tmp_path / "out", source=tmp_path, cifar_class=TinyCIFAR10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_missing_cifar_path_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["prepare", "--dataset", "cifar10", "--source", str(missing),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert str(missing) in result.output and "cifar-10-python.tar.gz" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 data in"):
        prepare("cifar10", "train", tmp_path / "out", source=empty)


def test_manifest_checksum_detects_a_modified_file(tmp_path):
    prepare("digits", "train", tmp_path)
    npz, manifest_path = prepared_paths(tmp_path, "digits", "train")
    data, labels, _ = load_prepared(npz)
    data = data.copy()
    data[0, 0, 0, 0] ^= 1
    np.savez(npz, data=data, labels=labels)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_prepared(manifest_path)
    npz.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="unreadable"):
        load_prepared(npz)
    npz.unlink()
    with pytest.raises(FileNotFoundError, match="cldsgm prepare"):
        load_prepared(npz)


def test_digits_split_is_deterministic_and_disjoint(tmp_path):
    train = prepare("digits", "train", tmp_path / "a")
    test = prepare("digits", "test", tmp_path / "a")
    again = prepare("digits", "train", tmp_path / "b")
    assert train["sha256"] == again["sha256"] and train["params"] == again["params"]
    train_idx, test_idx = set(train["params"]["indices"]), set(test["params"]["indices"])
    assert not train_idx & test_idx and len(train_idx | test_idx) == 1797
    assert train["count"] == 1438 and test["count"] == 359
    other_seed = prepare("digits", "train", tmp_path / "c", seed=1)
    assert other_seed["sha256"] != train["sha256"]
    data, _, _ = load_prepared(prepared_paths(tmp_path / "a", "digits", "train")[0])
    assert data.dtype == np.uint8 and data.max() == 255 and data.shape == (1438, 1, 8, 8)


def test_diamond_components_have_stated_means_and_std(tmp_path):
    prepare("diamond", "train", tmp_path, n=20_000, seed=3)
    points, _, manifest = load_prepared(prepared_paths(tmp_path, "diamond", "train")[0])
    assert manifest["kind"] == "points" and points.shape == (20_000, 2) and points.dtype == np.float32
    means = diamond().means.numpy()
    expected = np.array([(s * a, 0) for s in (-1, 1) for a in (2**-0.5,)] + [(0, s * 2**-0.5) for s in (-1, 1)]
                        + [(sx * 2**-1.5, sy * 2**-1.5) for sx in (-1, 1) for sy in (-1, 1)] + [(0, 0)])
    assert np.abs(np.sort(means, axis=0) - np.sort(expected, axis=0)).max() < 1e-12
    nearest = np.argmin(((points[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    for k in range(9):
        cluster = points[nearest == k]
        assert abs(len(cluster) / 20_000 - 1 / 9) < 0.015
        np.testing.assert_allclose(cluster.mean(0), means[k], atol=0.004)
        np.testing.assert_allclose(cluster.std(0), 0.04, rtol=0.06)
    test_points = prepare("diamond", "test", tmp_path, n=100, seed=3)
    assert test_points["sha256"] != manifest["sha256"]


def test_swissroll_has_five_clusters_with_stated_offsets_and_radius(tmp_path):
    prepare("multimodal_swissroll", "train", tmp_path, n=20_000, seed=0)
    points, _, _ = load_prepared(prepared_paths(tmp_path, "multimodal_swissroll", "train")[0])
    offsets = np.array([(0.0, 0.0), (0.8, 0.8), (0.8, -0.8), (-0.8, -0.8), (-0.8, 0.8)])
    nearest = np.argmin(((points[:, None, :] - offsets[None]) ** 2).sum(-1), axis=1)
    for k in range(5):
        cluster = points[nearest == k] - offsets[k]
        assert abs(len(cluster) / 20_000 - 0.2) < 0.015
        radius = np.linalg.norm(cluster, axis=1)
        assert np.quantile(radius, 0.01) > 0.047 - 0.01 and np.quantile(radius, 0.99) < 0.141 + 0.01
        assert radius.min() < 0.06 and radius.max() > 0.125
    assert not np.all(np.diff(nearest) >= 0)  # shuffled, not grouped by cluster


def write_image(path, size, color, left_color=None):
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    if left_color is not None:
        array[:, : size[0] // 4] = left_color  # a band that the center crop must remove
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_crops_resizes_and_labels(tmp_path):
    write_image(tmp_path / "imgs" / "cats" / "a.png", (40, 20), (200, 10, 10), left_color=(0, 0, 255))
    write_image(tmp_path / "imgs" / "cats" / "b.JPG", (16, 16), (10, 200, 10))
    write_image(tmp_path / "imgs" / "dogs" / "c.jpeg", (20, 40), (10, 10, 200))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    manifest = prepare("image_folder", "train", tmp_path / "out", source=tmp_path / "imgs", resolution=8, labels=True)
    data, labels, _ = load_prepared(prepared_paths(tmp_path / "out", "image_folder", "train")[0])
    assert data.shape == (3, 3, 8, 8) and data.dtype == np.uint8 and manifest["params"]["classes"] == ["cats", "dogs"]
    np.testing.assert_array_equal(labels, [0, 0, 1])
    np.testing.assert_array_equal(data[0].reshape(3, -1).mean(1).round(), [200, 10, 10])  # the band is cropped off
    assert abs(int(data[1, 1].mean()) - 200) <= 3  # JPEG, approximately green


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="contains no images"):
        prepare("image_folder", "train", tmp_path / "out", source=tmp_path / "empty", resolution=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare("image_folder", "train", tmp_path / "out", source=tmp_path / "missing", resolution=8)
    assert not (tmp_path / "out").exists()


def test_images_scale_to_the_unit_interval_and_dequantise_within_their_bin(tmp_path):
    from cldsgm.data.prepared import scale_images
    from cldsgm.eval.nll import dequantize_per_sample

    prepare("digits", "train", tmp_path)
    raw, _, _ = load_prepared(prepared_paths(tmp_path, "digits", "train")[0])
    item = scale_images(torch.from_numpy(raw[5]))
    assert item.dtype == torch.float32 and item.shape == (1, 8, 8)
    torch.testing.assert_close(item, torch.from_numpy(raw[5]).double().mul(2 / 255).sub(1).float())
    assert float(item.min()) >= -1 and float(item.max()) <= 1
    k = torch.from_numpy(raw[:4]).float()
    value = dequantize_per_sample(raw[:4], seed=0, first_index=0)
    assert bool(((value >= 2 * k / 256 - 1) & (value < 2 * (k + 1) / 256 - 1)).all())
    torch.testing.assert_close(dequantize_per_sample(raw[2:4], seed=0, first_index=2), value[2:])  # per item


def test_prepare_cli_reports_and_rejects(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "--dataset", "diamond", "--n", "50", "--out", str(tmp_path)])
    assert result.exit_code == 0 and "prepared diamond/train: 50 x [2]" in result.output
    manifest = json.loads((tmp_path / "diamond_train.json").read_text())
    assert manifest["count"] == 50 and manifest["file"] == "diamond_train.npz"
    result = CliRunner().invoke(main, ["prepare", "--dataset", "diamond", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs --n N" in result.output
