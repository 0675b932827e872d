"""Evaluation of conditional sample sets: the class a classifier sees in each sample against the class
asked for, and how exactly inpainting kept the known pixels."""

from __future__ import annotations

import numpy as np

__all__ = ["asked_classes", "known_pixel_error", "sample_classes"]


def asked_classes(manifest: dict, n: int) -> np.ndarray:
    """[n] the class each sample was asked to be: the guided class, or for an inpainted set the label of the image it
    completes. ValueError for an unconditional set, or inpainted images without labels."""
    from cldsgm.data.prepared import load_prepared

    identity = manifest["identity"]
    if "guidance" in identity:
        return np.full(n, int(identity["guidance"]["class"]))
    if "inpaint" in identity:
        _, labels, _ = load_prepared(identity["inpaint"]["images"])
        if labels is None:
            raise ValueError(f"{identity['inpaint']['images']} has no labels to compare the completions with")
        return labels[:n]
    raise ValueError("an unconditional sample set asks for no class (sample with --classifier, or inpaint)")


def sample_classes(samples: np.ndarray, classifier: str) -> np.ndarray:
    """[n] the class of each sample: 'oracle:<law>' for points (the mixture's most probable component) or the path
    of a `cldsgm digits-classifier` file for 8x8 digits (uint8)."""
    import torch

    if classifier.startswith("oracle:"):
        from cldsgm.oracles import oracle_law

        return oracle_law(classifier.split(":", 1)[1]).classify(torch.from_numpy(samples).double()).numpy()
    from cldsgm.eval.digits import load_classifier, predict

    return predict(load_classifier(classifier)[0], samples)


def known_pixel_error(samples: np.ndarray, manifest: dict) -> float:
    """Largest |sample - image| over the known pixels of an inpainted set (uint8 levels for images, data units for
    points): 0 when they were kept exactly."""
    from cldsgm.conditional import mask_of
    from cldsgm.data.prepared import load_prepared

    block = manifest["identity"]["inpaint"]
    images, _, _ = load_prepared(block["images"])
    images = images[:len(samples)]
    known = np.broadcast_to(mask_of(block["mask"], images.shape[1:]).numpy(), samples.shape) > 0.5
    difference = np.abs(samples.astype(np.float64) - images.astype(np.float64))
    return float(difference[known].max()) if known.any() else 0.0


def class_accuracy(samples: np.ndarray, manifest: dict, classifier: str,
                   resamples: int) -> tuple[float, np.ndarray | None]:
    """(the share of samples the judge assigns their asked class, its bootstrap replicates or None for 0 resamples,
    drawn from the set's seed)."""
    correct = (sample_classes(samples, classifier) == asked_classes(manifest, len(samples))).astype(float)
    replicates = None
    if resamples:
        from cldsgm.stats import resample_counts

        counts = resample_counts(len(samples), resamples, manifest["identity"]["seed"])
        replicates = counts @ correct / len(samples)
    return float(correct.mean()), replicates
