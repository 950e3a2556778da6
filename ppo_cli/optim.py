"""The optimizer: Adam over one flat parameter vector, the global-norm clip and the step.

:class:`FlatAdam` is a ``torch.optim.Adam`` whose one parameter is a flat tensor holding every
parameter of a module (each parameter, and each gradient, a view into it). Zeroing the gradient is
one ``fill``, the global-norm clip one dot product and a scaling, a step one call of Adam's fused
kernel over one tensor. :func:`clip_and_step` is the one place a PPO gradient step is taken.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ppo_cli.config import Config

log = logging.getLogger(__name__)

ADAM_EPS = 1e-5


class FlatAdam(torch.optim.Adam):
    """Adam over one flat tensor holding every parameter of a module, each parameter a view into it.

    The gradients are views into one flat gradient tensor too (autograd accumulates into an
    existing ``.grad`` in place). :meth:`lean_step` calls Adam's fused kernel
    (``torch._fused_adam_``, a private torch function) directly, as ``step()`` of
    ``torch.optim.Adam(fused=True)`` does after per-call bookkeeping (hooks, profiler records,
    grouping tensors by device) that one CPU tensor does not need: the same arithmetic, the same
    result bit for bit (tested). Where the kernel is missing or its call fails (another torch), it
    falls back to ``step()`` for good, with one log line.
    It is a ``torch.optim.Adam``: its state dict has one parameter whose moments are the module's,
    flattened in ``parameters()`` order; :meth:`load_state_dict` also accepts the per-parameter
    state of a plain Adam.
    """

    def __init__(self, module: nn.Module, lr: float, eps: float = ADAM_EPS) -> None:
        params = list(module.parameters())
        self.sizes = [p.numel() for p in params]
        flat, grad = torch.zeros(sum(self.sizes)), torch.zeros(sum(self.sizes))
        offset = 0
        for p, n in zip(params, self.sizes):
            flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = grad[offset:offset + n].view_as(p)
            offset += n
        self.flat = nn.Parameter(flat)
        self.flat.grad = grad
        self.grad_array = grad.numpy()  # the same memory
        kernel = getattr(torch, "_fused_adam_", None)
        try:
            super().__init__([self.flat], lr=lr, eps=eps, fused=kernel is not None)
        except (RuntimeError, TypeError):  # torch builds without the fused CPU kernel
            super().__init__([self.flat], lr=lr, eps=eps)
            kernel = None
        self._kernel = kernel
        self.lean = kernel is not None

    def lean_step(self) -> None:
        """``step()``: ``torch._fused_adam_`` on the flat tensor (``step()`` itself for the first
        step, which creates the state, and where the kernel is missing or fails)."""
        state = self.state.get(self.flat)
        if not self.lean or not state:
            self.step()
            return
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        step = state["step"]
        step.add_(1)
        try:
            self._kernel([self.flat], [self.flat.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [step],
                               amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                               grad_scale=None, found_inf=None)
        except (AttributeError, TypeError, RuntimeError) as exc:  # the private kernel changed: use the public step
            step.sub_(1)
            self.lean = False
            log.warning("torch._fused_adam_ failed (%s: %s); using torch.optim.Adam.step", type(exc).__name__, exc)
            self.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient in place (never ``None``: the parameters' grads are views into it)."""
        self.grad_array.fill(0.0)

    def clip_grad_norm_(self, max_norm: float) -> None:
        """``nn.utils.clip_grad_norm_`` on the flat gradient: scale by ``min(1, max_norm / (norm + 1e-6))``."""
        grad = self.grad_array
        coef = max_norm / (math.sqrt(float(np.dot(grad, grad))) + 1e-6)
        if coef < 1.0:
            grad *= np.float32(coef)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ids = state_dict["param_groups"][0]["params"]
        if len(ids) > 1:  # a plain Adam's per-parameter state: flatten its moments in the same order
            per_param = [state_dict["state"][i] for i in ids]
            state_dict = {"param_groups": [{**state_dict["param_groups"][0], "params": [0]}], "state": {0: {
                "step": torch.tensor(float(per_param[0]["step"])),
                "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in per_param]),
                "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in per_param]),
            }}}
        super().load_state_dict(state_dict)


def make_optimizer(module: nn.Module, config: Config) -> FlatAdam:
    """:class:`FlatAdam` with eps 1e-5 (the trainer sets the learning rate per iteration)."""
    return FlatAdam(module, lr=config.lr, eps=ADAM_EPS)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(optimizer: torch.optim.Optimizer, max_grad_norm: float) -> None:
    """Clip the gradient to global norm ``max_grad_norm`` and take one Adam step.

    :class:`FlatAdam` clips with one dot product and steps with its lean kernel; any other
    optimizer clips with ``nn.utils.clip_grad_norm_`` over its parameters and calls ``step()``.
    """
    if isinstance(optimizer, FlatAdam):
        optimizer.clip_grad_norm_(max_grad_norm)
        optimizer.lean_step()
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    optimizer.step()
