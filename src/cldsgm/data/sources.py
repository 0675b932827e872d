"""Raw sources turned into arrays: CIFAR-10, image folders, scikit-learn digits and 2-D toy data.

Every reader returns (data, labels or None, params) for one split; nothing here downloads unless the caller
passes download=True for CIFAR-10.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import check_integrity

__all__ = ["IMAGE_SUFFIXES", "cifar10", "diamond_points", "digits", "image_folder", "read_cifar10", "read_digits",
           "read_image_folder", "read_toy", "toy"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_HELP = ("supply the CIFAR-10 python archive: put cifar-10-python.tar.gz (from "
              "https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder cifar-10-batches-py/ in "
              "{root}, or enable download (--download, or download: true in a config) on a machine with internet")


def _cifar_root(source: Path, cls) -> Path:
    """The folder that holds (or will hold) cls.base_folder; accepts the archive path itself too."""
    if source.is_file() and source.name == cls.filename:
        return source.parent
    return source


def _extract_cifar(root: Path, cls) -> None:
    """Check the archive's md5 (when the class knows it) and extract it atomically into root."""
    archive = root / cls.filename
    if cls.tgz_md5 is not None and not check_integrity(str(archive), cls.tgz_md5):
        raise ValueError(f"CIFAR-10 archive {archive} is corrupted or truncated (md5 differs from "
                         f"{cls.tgz_md5}); download it again")
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"CIFAR-10 archive {archive} is corrupted or truncated ({err}); "
                             "download it again") from err
        extracted = Path(tmp) / cls.base_folder
        if not extracted.is_dir():
            raise ValueError(f"CIFAR-10 archive {archive} has no {cls.base_folder}/ folder")
        extracted.rename(root / cls.base_folder)


def cifar10(source, split: str, *, download: bool = False, cifar_class=torchvision.datasets.CIFAR10):
    """CIFAR-10 through torchvision's reader: uint8 [N, 3, 32, 32] images and labels.

    source: folder holding cifar-10-python.tar.gz or cifar-10-batches-py/, or the archive itself.
    split: 'train' (50,000) or 'test' (10,000). cifar_class: the torchvision class (tests pass a subclass
    whose md5 entries are None, so that a tiny archive in the real format can be read).
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    root = _cifar_root(Path(source), cifar_class)
    if not download:
        if not root.exists():
            raise FileNotFoundError(f"CIFAR-10 source {root} does not exist; " + CIFAR_HELP.format(root=root))
        if not (root / cifar_class.base_folder).is_dir():
            if not (root / cifar_class.filename).is_file():
                raise FileNotFoundError(f"no CIFAR-10 data in {root}; " + CIFAR_HELP.format(root=root))
            _extract_cifar(root, cifar_class)
    try:
        dataset = cifar_class(str(root), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise ValueError(f"CIFAR-10 files in {root / cifar_class.base_folder} are corrupted ({err}); "
                         + CIFAR_HELP.format(root=root)) from err
    images = np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    return images, np.asarray(dataset.targets, dtype=np.int64), {"source_root": str(root)}


def image_folder(source, split: str, *, resolution: int, labels: bool = False, test_fraction: float = 0.0,
                 seed: int = 0):
    """Every PNG/JPEG under `source`, center-cropped to a square and resized to resolution x resolution.

    labels: class index from the first-level sub-folder (sorted names). test_fraction > 0 splits the files
    by a seeded permutation into 'train' and 'test'; with 0 the only split is 'train'.
    """
    from PIL import Image
    from torchvision.transforms import functional as tf

    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {root} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    files = [files[i] for i in _split_indices(len(files), split, test_fraction, seed)]
    if not files:
        raise ValueError(f"split {split!r} of {root} is empty (test_fraction={test_fraction})")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    images, targets = [], []
    for path in files:
        with Image.open(path) as img:
            tensor = tf.pil_to_tensor(img.convert("RGB"))
        side = min(tensor.shape[-2:])
        tensor = tf.resize(tf.center_crop(tensor, [side, side]), [resolution, resolution], antialias=True)
        images.append(tensor.numpy())
        parts = path.relative_to(root).parts
        targets.append(classes.index(parts[0]) if len(parts) > 1 else -1)
    params = {"resolution": resolution, "test_fraction": test_fraction, "seed": seed, "classes": classes}
    return np.stack(images), (np.asarray(targets, dtype=np.int64) if labels else None), params


def _split_indices(count: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """A seeded, disjoint train/test split of range(count); sorted indices of the requested split."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    order = np.random.default_rng(seed).permutation(count)
    n_test = int(round(test_fraction * count))
    if split == "test" and n_test == 0:
        raise ValueError(f"the test split would be empty: test_fraction={test_fraction} of {count} items; "
                         "pass --test-fraction > 0 (e.g. 0.2)")
    return np.sort(order[:n_test] if split == "test" else order[n_test:])


def digits(split: str, *, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1,797 8x8 digits (shipped in the package) as uint8 [N, 1, 8, 8], values 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    index = _split_indices(len(bunch.images), split, test_fraction, seed)
    images = np.rint(bunch.images[index] * (255.0 / 16.0)).astype(np.uint8)[:, None]
    params = {"test_fraction": test_fraction, "seed": seed, "indices": index.tolist()}
    return images, bunch.target[index].astype(np.int64), params


def diamond_points(n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of the diamond mixture (cldsgm.oracles.diamond)."""
    from cldsgm.oracles import diamond

    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    return diamond().sample(n, generator=generator).numpy()


def toy(name: str, split: str, *, n: int, seed: int = 0):
    """n 2-D points of a toy law (a catalog dataset with a generator) as float32 [n, 2], with labels [n] (the
    component) where the law is a known mixture, else None; train and test use different streams of the same seed."""
    from cldsgm import catalog

    spec = catalog.dataset(name)
    if spec.generator is None:
        raise ValueError(f"{name!r} is not a toy dataset; toy datasets: "
                         f"{sorted(k for k, v in catalog.DATASETS.items() if v.generator)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    points = catalog.load(spec.generator)(n, rng).astype(np.float32)
    labels = None
    if spec.exact_law:  # a mixture law: each point's most probable component is its class (classifiers)
        from cldsgm.oracles import oracle_law

        labels = oracle_law(spec.oracle).classify(torch.from_numpy(points)).numpy()
    return points, labels, {"n": n, "seed": seed}


# -- the readers the catalog names per dataset: (name, split, the prepare options) -> (data, labels, params, origin) --
def read_cifar10(name: str, split: str, options: dict):
    extra = {} if options.get("cifar_class") is None else {"cifar_class": options["cifar_class"]}
    data, targets, params = cifar10(options["source"], split, download=options["download"], **extra)
    return data, targets, params, f"cifar10:{options['source']}"


def read_image_folder(name: str, split: str, options: dict):
    data, targets, params = image_folder(options["source"], split, resolution=options["resolution"],
                                         labels=options["labels"], test_fraction=options["test_fraction"] or 0.0,
                                         seed=options["seed"])
    return data, targets, params, f"image_folder:{options['source']}"


def read_digits(name: str, split: str, options: dict):
    data, targets, params = digits(split, test_fraction=options["test_fraction"], seed=options["seed"])
    return data, targets, params, "sklearn.datasets.load_digits"


def read_toy(name: str, split: str, options: dict):
    data, targets, params = toy(name, split, n=options["n"], seed=options["seed"])
    return data, targets, params, f"toy:{name}"
