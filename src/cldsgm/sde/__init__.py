"""Forward processes with exact perturbation kernels: VPSDE, CLD and PSLD (process maths only)."""

from cldsgm import catalog
from cldsgm.catalog import load
from cldsgm.sde.base import OBJECTIVES, LinearSDE, Perturbed
from cldsgm.sde.block_gaussian import Cov2, Tri2
from cldsgm.sde.phase_space import CLD, PSLD, PhaseSpaceSDE
from cldsgm.sde.schedule import LinearBeta, as_time
from cldsgm.sde.vpsde import VPSDE

__all__ = ["CLD", "PSLD", "SDES", "VPSDE", "Cov2", "LinearBeta", "LinearSDE", "OBJECTIVES", "Perturbed",
           "PhaseSpaceSDE", "Tri2", "as_time", "build_sde"]

SDES = {name: load(spec.cls) for name, spec in catalog.SDES.items()}  # name -> class, from cldsgm.catalog


def build_sde(name: str, **params) -> LinearSDE:
    """An SDE by its catalog name with keyword parameters; bad names or parameters raise ValueError."""
    if name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose from {sorted(SDES)}")
    try:
        return SDES[name](**params)
    except TypeError as err:  # an unknown keyword
        raise ValueError(f"sde parameters of {name!r}: {err}") from err
