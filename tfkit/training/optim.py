"""The optimizer: AdamW with decoupled weight decay, or Muon on the hidden matrices and AdamW on the rest.

Weight decay comes in two modes (`--weight-decay-mode`). PyTorch's AdamW multiplies the
decayed weights by 1 - lr_t * wd each step, where lr_t is the scheduled learning rate:
the decay is *coupled* to the learning rate, so an lr sweep also sweeps the decay.
*Independent* decay (Loshchilov & Hutter's original form, the one Wortsman et al. 2023
find lowers lr sensitivity) multiplies by 1 - (lr_t / lr) * wd: it follows the
schedule's shape but not the peak `lr`. It is the same kernel with the group's decay set
to wd / lr, so the fused step and every checkpoint stay as they are.

`--optimizer muon` (Jordan et al. 2024, "Muon: an optimizer for hidden layers") moves the
2-D weight matrices of the blocks by the orthogonalised Nesterov momentum of their
gradients (`--muon-ns-steps` Newton-Schulz iterations, five by default, in bfloat16 on CUDA and
float32 elsewhere), at `--muon-lr` times
sqrt(max(1, rows / cols)); embeddings, the output layer, norms and biases stay with AdamW
at `--lr`. Both follow the schedule: the Muon group's `lr_scale` is `--muon-lr / --lr`.
Its decay shrinks a matrix by what AdamW's would (lr_t * wd, or (lr_t / lr) * wd), so
`--weight-decay` means one thing under either optimizer. The update is PyTorch's
`torch.optim.Muon` (same arithmetic, bit for bit in bfloat16; tests/training/test_muon.py), written
here for two reasons: the trainer's skipped steps (`found_inf`, a device flag) must drop
its update on the device, without a host sync, as the fused AdamW kernel does; and
`torch.optim.Muon` is newer than the oldest torch tfkit supports. On CPU the iterations run in
float32: without a native bfloat16 matmul they take 2-3x longer in bfloat16, about as long as
the rest of a step at nanoGPT's CPU shape (`benchmarks/time_to_loss.py`). In float32 a matrix
at least twice as wide as tall (or tall as wide) runs them on its Gram matrix
(`gram_newton_schulz`): the same function with a quarter to a third fewer multiply-adds, as close to
float64's result as the plain iteration in float32 (tests/training/test_newton_schulz.py).
On a CPU `found_inf` is read (there is no device to wait for), so a taken step updates in
place and a skipped one returns early. Under FSDP a matrix is a DTensor of which each process
holds some rows: the momentum and the step stay on those rows, and only the Nesterov update is
gathered whole for Newton-Schulz, which every process runs on the same matrix (the
orthogonalised update of a piece is not a piece of the orthogonalised update). One optimizer
object holds both kinds of group, so the step, `found_inf`, the schedule and the checkpoints
treat it as the AdamW it extends.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tfkit.config import OptimConfig
from tfkit.errors import ConfigError

# the quintic Newton-Schulz coefficients and iterations of Jordan et al. (and torch.optim.Muon)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
# a float32 (or float64) matrix at least this many times wider than tall runs Newton-Schulz on its Gram matrix
GRAM_ASPECT = 2
GRAM_RUN = 3  # Gram-matrix steps before x and its Gram matrix are computed afresh


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (no decay on norms, biases, embeddings by default),
    or (`--optimizer muon`) a `MuonAdamW` with the blocks' hidden matrices under Muon.

    The fused kernel (CUDA and CPU) also lets a non-finite step be skipped without a
    host-device sync: the trainer sets `optimizer.found_inf` and the kernel skips the
    update on device (the Muon groups skip theirs on device too).
    """
    weight_decay = config.weight_decay / config.lr if config.weight_decay_mode == "independent" else config.weight_decay
    groups = model.param_groups(  # type: ignore[operator]
        weight_decay,
        decay_embeddings=config.decay_embeddings,
        decay_norms_and_biases=config.decay_norms_and_biases,
    )
    kwargs: dict[str, Any] = {
        "lr": config.lr,
        "betas": (config.beta1, config.beta2),
        "eps": config.eps,
        "fused": supports_fused(device),
    }
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    return MuonAdamW(muon_groups(model, groups, config, weight_decay), **kwargs)


def muon_groups(model: torch.nn.Module, groups: list[dict], config: OptimConfig, weight_decay: float) -> list[dict]:
    """The AdamW groups without the model's hidden matrices, then one Muon group of those.

    The Muon group runs at `--muon-lr / --lr` times the schedule's rate; its decay is scaled by
    the inverse, so each step shrinks a matrix by what AdamW's decay would.
    """
    hidden_matrices = getattr(model, "hidden_matrices", None)
    if hidden_matrices is None:
        raise ConfigError(f"--optimizer muon is not available for {type(model).__name__} models (GPT only)")
    hidden = hidden_matrices()
    muon_ids = {id(p) for p in hidden}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in muon_ids]} for g in groups]
    scale = config.muon_lr / config.lr
    muon = {
        "params": hidden,
        "muon": True,
        "lr_scale": scale,
        "weight_decay": weight_decay / scale,
        "momentum": config.muon_momentum,
        "ns_steps": config.muon_ns_steps,
    }
    return [g for g in rest if g["params"]] + [muon]


class MuonAdamW(torch.optim.AdamW):
    """AdamW on its ordinary groups, Muon (`torch.optim.Muon`'s update) on the groups marked `muon`.

    Muon groups take `momentum` (Nesterov), `weight_decay` and `ns_steps` (Newton-Schulz
    iterations, default `NS_STEPS`); every parameter in them is 2-D.
    Their state is one momentum buffer per matrix. When `found_inf` (a 0-d float tensor) is 1,
    `step` changes no parameter and no state, on the device, in both kinds of group.
    `ns_dtype` is the Newton-Schulz precision (default: bfloat16 on CUDA, float32 elsewhere).
    """

    def __init__(self, params: list[dict], ns_dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        self.ns_dtype = ns_dtype
        for group in params:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("momentum", 0.95)
                group.setdefault("ns_steps", NS_STEPS)
                if any(p.dim() != 2 for p in group["params"]):
                    raise ValueError("Muon groups hold 2-D matrices only")
        super().__init__(params, **kwargs)

    def __setstate__(self, state: dict) -> None:
        """As AdamW's (`load_state_dict` calls it), which expects Adam's state in every group: not Muon's."""
        groups = state["param_groups"]
        super().__setstate__({**state, "param_groups": [g for g in groups if not g.get("muon")]})
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        groups = self.param_groups
        for group in groups:
            if group["muon"]:
                self._muon_step(group, found_inf)
        self.param_groups = [g for g in groups if not g["muon"]]  # AdamW's step runs over its own groups
        try:
            super().step()
        finally:
            self.param_groups = groups
        return loss

    def _muon_step(self, group: dict, found_inf: torch.Tensor | None) -> None:
        lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        steps = group.get("ns_steps", NS_STEPS)  # a checkpoint of an earlier tfkit has no ns_steps: torch's 5
        keep = None if found_inf is None else found_inf == 0
        if found_inf is not None and found_inf.device.type == "cpu":
            if found_inf.item():  # read without a sync on a CPU: a skipped step touches nothing
                return
            keep = None
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
            # an FSDP shard (a DTensor): the arithmetic runs on this process's rows, Newton-Schulz on the whole matrix
            whole = _Whole(param) if hasattr(param, "placements") else None
            tensors = (param, param.grad, state["momentum_buffer"])
            p, grad, buf = (t.to_local() for t in tensors) if whole else tensors
            dtype = self.ns_dtype or (torch.bfloat16 if p.device.type == "cuda" else torch.float32)
            rows, cols = param.shape
            alpha = -lr * math.sqrt(max(1.0, rows / cols))
            if keep is None:  # in place: the same values as the branch below takes when keep is true
                buf.lerp_(grad, 1 - momentum)
                update = _orthogonalised(grad.lerp(buf, momentum), dtype, steps, whole)  # Nesterov
                p.mul_(1 - lr * decay).add_(update, alpha=alpha)
                continue
            new_buf = buf.lerp(grad, 1 - momentum)
            update = _orthogonalised(grad.lerp(new_buf, momentum), dtype, steps, whole)  # Nesterov
            new_p = p.mul(1 - lr * decay).add_(update, alpha=alpha)
            # a skipped step keeps both, decided on the device
            buf.copy_(torch.where(keep, new_buf, buf))
            p.copy_(torch.where(keep, new_p, p))


def _orthogonalised(nesterov: torch.Tensor, dtype: torch.dtype, steps: int, whole: _Whole | None) -> torch.Tensor:
    """Newton-Schulz of a fresh Nesterov update (changed in place), of the whole matrix when it is a shard."""
    if whole is None:
        return newton_schulz(nesterov.to(dtype), steps)
    return whole.shard(newton_schulz(whole.gather(nesterov).to(dtype), steps))


class _Whole:
    """The whole matrix of an FSDP-sharded parameter (a DTensor) and back: `gather` a local piece into the
    matrix every process then holds, `shard` such a matrix into this process's piece (no communication)."""

    def __init__(self, param: torch.Tensor) -> None:
        self.param = param

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        p = self.param
        return DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()

    def shard(self, whole: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor, Replicate

        p = self.param
        replicated = DTensor.from_local(whole, p.device_mesh, [Replicate()] * p.device_mesh.ndim)
        return replicated.redistribute(p.device_mesh, p.placements).to_local()


def orthogonalise(grad: torch.Tensor, dtype: torch.dtype = torch.bfloat16, steps: int = NS_STEPS) -> torch.Tensor:
    """The quintic Newton-Schulz iteration towards U V^T of grad = U S V^T, in `dtype` (`grad` is not changed)."""
    return newton_schulz(grad.to(dtype, copy=True), steps)


def newton_schulz(x: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """`orthogonalise` of a 2-D `x` in its own dtype, in `steps` iterations; `x` is scaled in place.

    As Jordan et al. (and `torch.optim.Muon`): the singular values land in about [0.5, 1.5],
    which trains as well as exactly 1 and takes five matmul steps (fewer leave the smallest
    singular values lower: each step multiplies a small one by about 3.4). In float32 or float64,
    a matrix at least `GRAM_ASPECT` times wider than tall (after transposing a tall one) runs
    the same iteration on its Gram matrix (`gram_newton_schulz`); other matrices, and every
    matrix in lower precisions, run it as `torch.optim.Muon` does.
    """
    a, b, c = NS_COEFFICIENTS
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=NS_EPS))  # spectral norm at most 1
    if x.dtype in (torch.float32, torch.float64) and x.size(1) >= GRAM_ASPECT * x.size(0):
        x = gram_newton_schulz(x, steps)
    else:
        for _ in range(steps):
            gram = x @ x.T
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def gram_newton_schulz(x: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """The Newton-Schulz iterations of a wide (m, n) `x`, carried out mostly on m x m matrices.

    Each step is x <- s(G) x with G = x x^T and s(G) = a I + b G + c G^2. Every s(G) is a
    polynomial in the Gram matrix the run started from, so they commute, and the next Gram
    matrix is s x x^T s = G s^2: a run of steps updates G <- G s^2 and P <- P s, and ends
    with x <- P x. Rounding in G grows along a run, so the steps go in runs of at most
    `GRAM_RUN` (five as 3 + 2), each starting from a freshly computed x x^T; this keeps
    the result of five steps as close to float64's as the plain iteration in the same
    precision keeps it (three steps, one run: within 1e-5 of it, relative, in float32).
    At five steps, four (m, m, n) matmuls and 14 of (m, m, m) instead of ten and five: 67% of the
    multiply-adds at n = 4m, 74% at n = 3m.
    """
    a, b, c = NS_COEFFICIENTS
    for run in (min(GRAM_RUN, steps - start) for start in range(0, steps, GRAM_RUN)):
        gram = x @ x.T
        product = None
        for step in range(run):
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            poly.diagonal().add_(a)  # s(G)
            product = poly if product is None else product @ poly
            if step < run - 1:
                gram = gram @ (poly @ poly)
        x = product @ x
    return x


def supports_fused(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu", "mps")
