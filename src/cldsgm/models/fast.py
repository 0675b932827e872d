"""Fast paths of a network that change how fast it runs, not what it computes (within a stated tolerance).

- `compile_blocks`: regional compilation. Each repeated block class a network declares (`repeated_blocks`: NCSN++'s
  residual and attention blocks) is compiled in place with `dynamic=False`; dynamo makes one graph per distinct
  block shape and reuses it for every instance, so compilation costs seconds per shape instead of one trace of
  the whole U-Net. Parameters and state dicts are untouched.
- `set_norm_dtype`: GroupNorm under autocast in the compute dtype (bf16/fp16) instead of autocast's float32, so a
  bf16 network pays no cast in and out of each of its ~150 GroupNorms. The statistics are still accumulated in
  float32 inside the kernel; only the normalised output is rounded.
- `cast_for_inference`: weights cast once to bf16/fp16 for sampling (no autocast, no per-call weight casts), the
  time embedding kept in float32 (`fp32_modules`: sin/cos of 2 pi W log t need float32's mantissa).
- `GraphedNet`: a network call captured once in a CUDA graph for a static input shape and replayed (launch-bound
  sampling); on a CPU it is the eager call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NORM_DTYPES", "GraphedNet", "cast_for_inference", "compile_blocks", "set_norm_dtype"]

NORM_DTYPES = ("fp32", "compute")  # GroupNorm under autocast: float32 (autocast's rule) or the compute dtype


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The instances of the block classes `model` declares in `repeated_blocks` (empty if it declares none)."""
    classes = tuple(getattr(model, "repeated_blocks", ()))
    return [m for m in model.modules() if classes and isinstance(m, classes)]


def compile_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile every repeated block of `model` in place (regional compilation) and return `model`.

    ValueError for a network that declares no repeated blocks (compile it whole instead)."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} declares no repeated blocks to compile one by one; compile the whole "
                         "network instead (train.compile: true)")
    import torch._dynamo.config as dynamo_config

    # one graph per distinct block shape and batch shape: at most one per instance for each of the train step's and
    # the fit check's batch shapes. Past the limit dynamo would silently run the remaining shapes eagerly.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * len(blocks))
    for block in blocks:
        block.compile(backend=backend, mode=mode, dynamic=False)
    return model


def set_norm_dtype(model: nn.Module, norm_dtype: str) -> nn.Module:
    """GroupNorm layers of `model` run under autocast in float32 ('fp32', autocast's rule) or in the autocast
    dtype ('compute'). Without autocast both are the plain GroupNorm. Returns `model`."""
    if norm_dtype not in NORM_DTYPES:
        raise ValueError(f"norm dtype must be one of {list(NORM_DTYPES)}, got {norm_dtype!r}")
    from cldsgm.models.layers import GroupNorm

    for module in model.modules():
        if isinstance(module, GroupNorm):
            module.in_compute_dtype = norm_dtype == "compute"
    return model


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast `model`'s parameters and buffers to `dtype` in place, except the submodules it names in `fp32_modules`
    (kept float32), and return it. ValueError for a network that does not say which parts must stay float32."""
    keep = getattr(model, "fp32_modules", None)
    if keep is None:
        raise ValueError(f"{type(model).__name__} does not declare which of its parts must stay float32 "
                         "(fp32_modules); cast_weights needs an NCSN++ network")
    kept = [module for name in keep if (module := getattr(model, name, None)) is not None]  # positional: no Fourier
    kept_ids = {id(t) for module in kept for t in [*module.parameters(), *module.buffers()]}
    for module in model.modules():  # tensor by tensor: a round trip through bf16 would lose the kept ones' bits
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.is_floating_point() and id(tensor) not in kept_ids:
                    tensor.data = tensor.data.to(dtype)
    return model


class GraphedNet(nn.Module):
    """`net(u, t)` replayed from a CUDA graph captured at the first call of each input shape and dtype.

    Inputs are copied into the graph's static buffers and the static output is cloned out, so callers see an ordinary
    function. Inference only (no autograd). On a CPU, and for inputs that require grad, it is the eager call.
    """

    def __init__(self, net: nn.Module, warmup: int = 3):
        super().__init__()
        self.net, self.warmup, self._graphs = net, int(warmup), {}

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        if u.device.type != "cuda" or torch.is_grad_enabled() and (u.requires_grad or t.requires_grad):
            return self.net(u, t)
        key = (tuple(u.shape), u.dtype, tuple(t.shape), t.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(u, t)
        graph, static_u, static_t, static_out = self._graphs[key]
        static_u.copy_(u)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()

    def _capture(self, u: Tensor, t: Tensor):
        # ordinary tensors, not inference tensors, so that later calls under no_grad may also copy into them
        with torch.inference_mode(False), torch.no_grad():
            static_u, static_t = u.clone(), t.clone()
            stream = torch.cuda.Stream(u.device)
            stream.wait_stream(torch.cuda.current_stream(u.device))
            with torch.cuda.stream(stream):  # warm-up outside the graph: compilation, cuDNN autotuning
                for _ in range(self.warmup):
                    self.net(static_u, static_t)
            torch.cuda.current_stream(u.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.net(static_u, static_t)
        return graph, static_u, static_t, static_out
