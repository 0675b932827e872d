"""cldsgm: phase-space diffusion models (CLD, PSLD) and the VPSDE baseline."""

__version__ = "0.1.0"
