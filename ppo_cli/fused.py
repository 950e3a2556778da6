"""One PPO minibatch of a Gaussian :class:`~ppo_cli.agent.ActorCritic` as one autograd node.

A 64-sample minibatch through two 64x64 MLPs is tiny arithmetic: composed from torch operations,
its forward pass, loss and backward pass are ~60 operations whose dispatch and autograd
bookkeeping cost most of the update's time. :class:`FusedGaussianPPO` computes the same numbers in
numpy, which calls the same BLAS for the matrix products at a fraction of the per-call cost:

* forward: ``h_{k+1} = f(h_k @ W_k + b_k)`` (``f`` tanh, relu or elu) for both networks at once (the stacked ``(2, in,
  out)`` weights; numpy's ``matmul`` broadcasts the observation over them), then the output layer;
* the loss: clipped (optionally dual-clip) surrogate, (optionally clipped) value loss, entropy,
  exactly as :mod:`ppo_cli.losses` composes them;
* the gradient, written out: with ``w_i = dL/dlogp_i = -A_i r_i [lo_i <= r_i <= hi_i] / B`` (the
  clip written as ``clamp(r, lo, hi)``: for ``A > 0`` ``lo = -inf, hi = 1 + eps``, for ``A <= 0``
  ``lo = 1 - eps, hi = dual_clip or inf``) and ``z = (a - mean) / std``:
  ``dL/dmean = w z / std``, ``dL/dlog_std = sum_i w_i (z_i^2 - 1) - ent_coef``,
  ``dL/dV = vf_coef (V - R) / B`` (clipped: the error of whichever branch is larger, zero for the
  clipped branch outside the clip range); then back through the layers,
  ``dW_k = h_k^T d_k``, ``db_k = sum d_k``, ``d_{k-1} = (d_k W_k^T) f'(h_k)``, ``f'`` written as a function of the layer's output
  (:func:`~ppo_cli.agent.activation_grad`: tanh' = 1 - h^2).

It stays a torch autograd node: the parameters are the module's tensors (numpy views of them, no
copy), ``loss.backward()`` hands the gradient to autograd, which accumulates it into ``.grad``,
and torch's Adam steps. Where the parameters are views into one flat tensor (the trainer's
:class:`~ppo_cli.optim.FlatAdam`), that tensor is the node's one input and the gradient one
vector: autograd's engine then accumulates one tensor instead of seven. Value and gradients equal
the composed torch path, :func:`ppo_cli.losses.minibatch_loss` (``--update autograd``; tested in
float64 to 1e-10, across value clip, dual clip, entropy and depths; float32 training matches it to
rounding). :func:`unsupported` says what it cannot compute; it is used only where it can. What it
saves per minibatch is measured in ``docs/performance.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ppo_cli.agent import LOG_2PI, ActorCritic, activate, activation_grad
from ppo_cli.losses import total_loss


class LossCoefs(NamedTuple):
    """The loss's settings (see :class:`~ppo_cli.config.Config`)."""

    clip_coef: float
    dual_clip: float | None
    clip_vloss: bool
    ent_coef: float
    vf_coef: float


class Params(NamedTuple):
    """An actor-critic's parameters (or gradients) as numpy arrays: ``weights[k]`` ``(2, in, out)``,
    ``biases[k]`` ``(2, 1, out)`` (actor, critic), as in :class:`~ppo_cli.agent.ActorCritic`."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    log_std: np.ndarray


def forward_backward(params: Params, grads: Params, obs: np.ndarray, actions: np.ndarray,
                     old_logprobs: np.ndarray, old_values: np.ndarray, returns: np.ndarray, advantages: np.ndarray,
                     coefs: LossCoefs, activation: str = "tanh") -> tuple[float, np.ndarray, np.ndarray]:
    """The minibatch loss, in the dtype of the inputs, of MLPs whose hidden layers apply ``activation``;
    its gradient is written into ``grads``.

    Returns ``(loss, [policy_loss, value_loss, entropy], logratio)``.
    """
    weights, biases, log_std = params
    batch, act_dim = actions.shape
    last = len(weights) - 1
    inputs = []  # the input of every layer
    h = obs
    for k, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        h = np.matmul(h, w)
        h += b
        if k < last:
            activate(activation, h)
    mean, value = h[0], h[1, :, 0]

    # the loss (see ppo_cli.losses)
    inv_std = np.exp(-log_std)
    z = (actions - mean) * inv_std
    total = np.add.reduce  # sum over the first axis, without ndarray.sum's Python layer
    log_std_sum = total(log_std)
    logratio = -0.5 * total(z * z, axis=1) - (log_std_sum + 0.5 * LOG_2PI * act_dim) - old_logprobs
    ratio = np.exp(logratio)
    positive = advantages > 0
    lo = np.where(positive, -np.inf, 1.0 - coefs.clip_coef)
    hi = np.where(positive, 1.0 + coefs.clip_coef, np.inf if coefs.dual_clip is None else coefs.dual_clip)
    clipped_ratio = np.minimum(np.maximum(ratio, lo), hi)
    policy_loss = -total(advantages * clipped_ratio) / batch
    err = value - returns
    if coefs.clip_vloss:
        delta = value - old_values
        clipped_err = old_values + np.minimum(np.maximum(delta, -coefs.clip_coef), coefs.clip_coef) - returns
        sq, clipped_sq = err * err, clipped_err * clipped_err
        v_loss = 0.5 * total(np.maximum(sq, clipped_sq)) / batch
        d_value = np.where(sq >= clipped_sq, err, clipped_err * (np.abs(delta) <= coefs.clip_coef))
    else:
        v_loss = 0.5 * total(err * err) / batch
        d_value = err
    entropy = log_std_sum + (0.5 + 0.5 * LOG_2PI) * act_dim
    loss = total_loss(policy_loss, v_loss, entropy, coefs.ent_coef, coefs.vf_coef)

    # its gradient: the loss's outputs, then back through the layers
    w_logp = advantages * ratio * ((ratio >= lo) & (ratio <= hi)) * (-1.0 / batch)
    wz = w_logp[:, None] * z
    grads.log_std[:] = total(wz * z) - total(w_logp) - coefs.ent_coef
    d = np.zeros_like(h)
    d[0] = wz * inv_std
    d[1, :, 0] = d_value * (coefs.vf_coef / batch)
    ones = np.ones((1, batch), dtype=d.dtype)
    for k in range(last, -1, -1):
        x = inputs[k]
        np.matmul(x.swapaxes(-1, -2), d, out=grads.weights[k])  # layer 0: (in, B) @ (2, B, out)
        np.matmul(ones, d, out=grads.biases[k])  # the sum over the batch, as one BLAS call
        if k > 0:
            d = np.matmul(d, weights[k].swapaxes(1, 2))
            d *= activation_grad(activation, x)  # f' from the layer's output
    terms = np.array([policy_loss, v_loss, entropy], dtype=obs.dtype)
    return float(loss), terms, logratio


class FusedGaussianPPO(torch.autograd.Function):
    """``apply(loss_fn, obs, actions, old_logprobs, old_values, returns, advantages, *inputs)`` ->
    ``(loss, [policy_loss, value_loss, entropy], logratio)``, where ``loss_fn`` is the
    :class:`FusedLoss` whose ``inputs`` are passed; only ``loss`` is differentiable."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, loss_fn: FusedLoss, obs: torch.Tensor,
                actions: torch.Tensor, old_logprobs: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                advantages: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grad = np.empty(loss_fn.size, dtype=obs.numpy().dtype)  # fresh: each call's gradient is its own
        loss, terms, logratio = forward_backward(
            loss_fn.param_arrays(), loss_fn.split(grad), obs.numpy(), actions.numpy(), old_logprobs.numpy(),
            old_values.numpy(), returns.numpy(), advantages.numpy(), loss_fn.coefs, loss_fn.activation)
        ctx.grads = loss_fn.input_grads(grad)
        terms, logratio = torch.from_numpy(terms), torch.from_numpy(logratio)
        ctx.mark_non_differentiable(terms, logratio)
        return torch.tensor(loss, dtype=terms.dtype), terms, logratio

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        scale = float(grad_loss)
        return (None,) * 7 + tuple(g if scale == 1.0 else g * scale for g in ctx.grads)


def unsupported(agent: ActorCritic) -> str | None:
    """Why :class:`FusedLoss` cannot compute ``agent``'s loss, or None: it knows a Gaussian policy of
    tanh, relu or elu MLPs (:class:`~ppo_cli.agent.ActorCritic`) with float32 or float64 parameters on
    the CPU."""
    if agent.discrete:
        return "its actions are discrete (the fused update is for Gaussian policies)"
    if getattr(agent, "activation", None) not in ("tanh", "relu", "elu"):
        return f"its activation is {getattr(agent, 'activation', 'unknown')} (the fused update knows tanh, relu, elu)"
    for p in agent.parameters():
        if p.device.type != "cpu":
            return f"its parameters are on {p.device} (the fused update computes in numpy, on the CPU)"
        if p.dtype not in (torch.float32, torch.float64):
            return f"its parameters are {p.dtype} (the fused update computes float32 or float64)"
    return None


class FusedLoss:
    """The minibatch loss of a Gaussian ``agent`` through :class:`FusedGaussianPPO`:
    ``loss_fn(obs, actions, old_logprobs, old_values, returns, advantages)`` ->
    ``(loss, [policy_loss, value_loss, entropy], logratio)``.

    With ``flat`` (a tensor whose consecutive slices, in ``agent.parameters()`` order, are the
    agent's parameters, as :class:`~ppo_cli.optim.FlatAdam` arranges them) the gradient goes to
    ``flat``, which autograd accumulates into ``flat.grad`` and so into every parameter's ``.grad``
    (views into it); without it, to each parameter.
    """

    def __init__(self, agent: ActorCritic, coefs: LossCoefs, flat: torch.Tensor | None = None) -> None:
        problem = unsupported(agent)
        if problem is not None:
            raise ValueError(f"the fused update cannot compute this policy: {problem}")
        self.coefs = coefs
        self.activation = agent.activation
        self.params = list(agent.parameters())
        # each parameter's slice of a flat vector, in parameters() order
        self.slices, offset = [], 0
        for p in self.params:
            self.slices.append((slice(offset, offset + p.numel()), tuple(p.shape)))
            offset += p.numel()
        self.size = offset
        # each parameter's place in Params, in parameters() order
        places = {id(agent.log_std): ("log_std", 0)}
        for k, (w, b) in enumerate(zip(agent.weights, agent.biases)):
            places[id(w)], places[id(b)] = ("weights", k), ("biases", k)
        self.places = [places[id(p)] for p in self.params]
        self.num_layers = len(agent.weights)
        self.flat = flat
        if flat is not None:
            for p, (where, _) in zip(self.params, self.slices):
                if p.data_ptr() != flat.data_ptr() + where.start * flat.element_size() or not p.is_contiguous():
                    raise ValueError("the agent's parameters are not consecutive slices of `flat`")
            if self.size != flat.numel():
                raise ValueError(f"`flat` holds {flat.numel()} numbers, the agent's parameters {self.size}")
            self.inputs: tuple[torch.Tensor, ...] = (flat,)
            self._params = self.split(flat.detach().numpy())  # views: Adam updates the same memory in place
        else:
            self.inputs = tuple(self.params)

    def _views(self, vector: np.ndarray) -> list[np.ndarray]:
        """Views of a flat vector in ``parameters()`` order, shaped as the parameters."""
        return [vector[where].reshape(shape) for where, shape in self.slices]

    def split(self, vector: np.ndarray) -> Params:
        """:meth:`_views` arranged as :class:`Params`."""
        return self._arrange(self._views(vector))

    def _arrange(self, arrays: list[np.ndarray]) -> Params:
        """Arrays in ``parameters()`` order -> :class:`Params`."""
        out = Params([None] * self.num_layers, [None] * self.num_layers, None)
        for (name, k), array in zip(self.places, arrays):
            if name == "log_std":
                out = out._replace(log_std=array)
            else:
                getattr(out, name)[k] = array
        return out

    def param_arrays(self) -> Params:
        if self.flat is not None:
            return self._params
        return self._arrange([p.detach().numpy() for p in self.params])

    def input_grads(self, grad: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The gradient with respect to :attr:`inputs` (the flat tensor, or the parameters in
        ``parameters()`` order), from the flat gradient vector."""
        if self.flat is not None:
            return (torch.from_numpy(grad),)
        return tuple(torch.from_numpy(view) for view in self._views(grad))

    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                 old_values: torch.Tensor, returns: torch.Tensor, advantages: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return FusedGaussianPPO.apply(self, obs, actions, old_logprobs, old_values, returns, advantages,
                                      *self.inputs)
