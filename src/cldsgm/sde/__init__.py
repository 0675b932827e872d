"""Forward processes with exact perturbation kernels: VPSDE, CLD and PSLD (process maths only)."""

from cldsgm.sde.base import OBJECTIVES, LinearSDE, Perturbed
from cldsgm.sde.block_gaussian import Cov2, Tri2
from cldsgm.sde.phase_space import CLD, PSLD, PhaseSpaceSDE
from cldsgm.sde.schedule import LinearBeta, as_time
from cldsgm.sde.vpsde import VPSDE

__all__ = ["CLD", "PSLD", "VPSDE", "Cov2", "LinearBeta", "LinearSDE", "OBJECTIVES", "Perturbed",
           "PhaseSpaceSDE", "Tri2", "as_time"]
