"""The papers' published CIFAR-10 numbers (as the CLD and PSLD papers report them), with their status.

'confirmed' numbers were read in a primary or secondary source; 'unconfirmed' ones are targets to measure.
"""

PUBLISHED = [
    # (study sde, sampler, NFE, metric, value, status, source)
    ("cld", "ode", 312, "fid", 2.25, "confirmed", "CLD paper Table 2 (probability-flow ODE, rtol = atol = 1e-5)"),
    ("cld", "ode", 147, "fid", 2.71, "confirmed", "CLD paper Table 2 (looser ODE tolerance)"),
    ("cld", "sde", None, "fid", 2.23, "confirmed", "CLD project page (generative SDE; sampler and NFE unconfirmed)"),
    ("cld", "sscs", 150, "fid", 3.07, "confirmed", "CLD paper (SSCS, quadratic striding, n = 150)"),
    ("cld", "em", 150, "fid", 7.00, "confirmed", "CLD paper (EM, quadratic striding, n = 150)"),
    ("cld", "em", 1000, "fid", 2.27, "confirmed", "PSLD paper Table 1 (CLD with mixed score, n = 1000)"),
    ("cld", "ode", None, "nll_bpd", 3.31, "confirmed", "CLD paper (upper bound, bits/dim)"),
    ("vpsde", "ode", 141, "fid", 2.76, "confirmed", "CLD paper Table 2 (VPSDE probability-flow ODE)"),
    ("psld", None, None, "fid", 2.10, "confirmed", "PSLD abstract (sampler and NFE unconfirmed)"),
    ("psld", "sscs", 100, "fid", 4.83, "unconfirmed", "Pandey, Rudolph & Mandt 2024 (PSLD model, SSCS)"),
    ("psld", "em", 100, "fid", 7.83, "unconfirmed", "Pandey, Rudolph & Mandt 2024 (PSLD model, EM)"),
]
