"""The actor-critic: a torch module for learning and a numpy copy for acting.

:class:`ActorCritic` (torch) holds two separate MLPs, an actor and a critic, with the same
hidden widths and activation (tanh, relu or elu), orthogonally initialised (hidden gain sqrt(2),
policy output 0.01, value output 1).
They share no parameter; their weights are stored stacked, ``weights[k]`` of shape
``(2, in, out)`` with index 0 the actor and 1 the critic, so one batched matrix product
(``torch.baddbmm``) evaluates a layer of both networks: half the operations per minibatch, which is
what an update of 64-sample minibatches spends its time on. The critic's output layer is as wide
as the actor's; its extra columns start at 0, receive exactly zero gradient and so stay 0 (the
value is column 0). For a ``Box`` action space the policy is a diagonal Gaussian whose mean is the
actor's output and whose log-std is a state-independent parameter (initialised to
``init_log_std``); actions are sampled from the unclipped Normal and only the action sent to the
environment is clipped. For a ``Discrete`` space the actor's outputs are the logits of a
categorical policy.

:class:`RolloutPolicy` (numpy) acts during rollouts. It holds the same weights fused into block
matrices, so one pass of three matrix products computes the actor and the critic together:

    layer 0:   [W_a0 | W_c0]              (side by side)
    layer k:   diag(W_ak, W_ck)           (block diagonal)
    output:    diag(W_a_out, w_c_out)     -> [mean or logits | value]

The zero blocks add exact zeros, so it computes the same function as the torch module (tested
to 1e-6) at a fraction of torch's per-call overhead. It is refreshed from the module after
every update with :meth:`RolloutPolicy.sync`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
ACTOR, CRITIC = 0, 1
TORCH_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu}


def activate(name: str, h: np.ndarray) -> None:
    """Apply the hidden activation ``name`` to ``h`` in place (numpy; the same function as torch's)."""
    if name == "tanh":
        np.tanh(h, out=h)
    elif name == "relu":
        np.maximum(h, 0, out=h)
    elif name == "elu":  # x for x > 0, exp(x) - 1 otherwise
        np.copyto(h, np.expm1(np.minimum(h, 0)), where=h <= 0)
    else:
        raise ValueError(f"unknown activation {name!r}")


def activation_grad(name: str, y: np.ndarray) -> np.ndarray:
    """The activation's derivative at the input that gave output ``y`` (each of the three is a
    function of its output: tanh' = 1 - y^2, relu' = [y > 0], elu' = 1 for y > 0 else y + 1)."""
    if name == "tanh":
        return 1.0 - y * y
    if name == "relu":
        return (y > 0).astype(y.dtype)
    if name == "elu":
        return np.where(y > 0, 1.0, y + 1.0).astype(y.dtype, copy=False)
    raise ValueError(f"unknown activation {name!r}")


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (stacked weights); Gaussian (state-independent log-std) or
    categorical head."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...] = (64, 64),
                 discrete: bool = False, seed: int = 0, init_log_std: float = 0.0, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in TORCH_ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(TORCH_ACTIVATIONS)}")
        generator = torch.Generator().manual_seed(seed)
        self.obs_dim, self.act_dim, self.discrete = obs_dim, act_dim, discrete
        self.activation = activation  # of the hidden layers
        self.hidden_sizes = tuple(hidden_sizes)
        sizes = [obs_dim, *self.hidden_sizes, act_dim]
        gains = [math.sqrt(2.0)] * len(self.hidden_sizes)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self.weights.append(nn.Parameter(torch.zeros(2, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.zeros(2, 1, fan_out)))
        with torch.no_grad():  # actor layers first, then critic layers: one generator stream
            for net, out_gain in ((ACTOR, 0.01), (CRITIC, 1.0)):
                for k, gain in enumerate(gains + [out_gain]):
                    fan_out = 1 if (net == CRITIC and k == len(gains)) else sizes[k + 1]
                    w = torch.empty(fan_out, sizes[k])  # nn.Linear's (out, in) layout
                    nn.init.orthogonal_(w, gain, generator=generator)
                    self.weights[k][net, :, :fan_out] = w.T
        if not discrete:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, obs_dim)`` -> (mean or logits ``(batch, act_dim)``, value ``(batch,)``)."""
        h = obs.unsqueeze(0).expand(2, -1, -1)
        last = len(self.weights) - 1
        act = TORCH_ACTIVATIONS[self.activation]
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = act(h)
        return h[ACTOR], h[CRITIC, :, 0]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``(batch, obs_dim)`` -> ``(batch,)``."""
        return self.forward(obs)[1]

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probability and entropy of ``actions`` under the policy, and the value; each ``(batch,)``.

        ``actions`` is ``(batch, act_dim)`` float for Gaussian policies, ``(batch,)`` integer
        (stored as float) for categorical ones.
        """
        out, value = self.forward(obs)
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            logprob = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return logprob, entropy, value
        log_std = self.log_std
        z = (actions - out) * torch.exp(-log_std)
        logprob = -0.5 * (z * z).sum(-1) - (log_std.sum() + 0.5 * LOG_2PI * self.act_dim)
        entropy = (log_std.sum() + (0.5 + 0.5 * LOG_2PI) * self.act_dim).expand(value.shape)
        return logprob, entropy, value


class RolloutPolicy:
    """Numpy copy of an :class:`ActorCritic` that samples actions and values for a batch of envs."""

    def __init__(self, agent: ActorCritic) -> None:
        self.discrete = agent.discrete
        self.act_dim = agent.act_dim
        self.activation = agent.activation
        widths = agent.hidden_sizes
        fused = [2 * w for w in widths]
        ins = [agent.obs_dim] + fused
        outs = fused + [agent.act_dim + 1]
        # stored transposed, (in, out), so a batch ``x @ W`` needs no transpose per call
        self.weights = [np.zeros((i, o), dtype=np.float32) for i, o in zip(ins, outs)]
        self.biases = [np.zeros(o, dtype=np.float32) for o in outs]
        self.log_std = np.zeros(agent.act_dim, dtype=np.float32)
        self.std = np.ones(agent.act_dim, dtype=np.float32)
        self.logprob_offset = np.float32(0.5 * LOG_2PI * agent.act_dim)
        self.sync(agent)

    @torch.no_grad()
    def sync(self, agent: ActorCritic) -> None:
        """Copy the module's current weights into the fused matrices."""
        last = len(agent.weights) - 1
        for k, (w_t, b_t) in enumerate(zip(agent.weights, agent.biases)):
            w, b = self.weights[k], self.biases[k]
            wa, wc = w_t[ACTOR].numpy(), w_t[CRITIC].numpy()  # (in, out)
            ba, bc = b_t[ACTOR, 0].numpy(), b_t[CRITIC, 0].numpy()
            if k == last:  # the critic's value is column 0
                wc, bc = wc[:, :1], bc[:1]
            oa = wa.shape[1]
            if k == 0:  # both read the observation
                w[:, :oa] = wa
                w[:, oa:] = wc
            else:
                ia = wa.shape[0]
                w[:ia, :oa] = wa
                w[ia:, oa:] = wc
            b[:oa] = ba
            b[oa:] = bc
        if not self.discrete:
            self.log_std[:] = agent.log_std.numpy()
            self.std[:] = np.exp(self.log_std)
            self.logprob_offset = self.log_std.sum() + 0.5 * LOG_2PI * self.act_dim  # log-prob = -|noise|^2 / 2 - this

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n, obs_dim)`` float32 -> (mean or logits ``(n, act_dim)``, value ``(n,)``)."""
        h = obs
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w
            h += b
            if k < last:
                activate(self.activation, h)
        return h[:, :-1], h[:, -1]

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.forward(obs)[1]

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample actions from pre-drawn noise; returns ``(actions, logprobs, values)``.

        Gaussian: ``noise`` is standard normal ``(n, act_dim)``; actions ``(n, act_dim)`` float32,
        unclipped. Categorical: ``noise`` is uniform on [0, 1) ``(n, 1)``; actions ``(n,)`` int64.
        """
        out, value = self.forward(obs)
        if self.discrete:
            log_probs = _log_softmax(out)
            cdf = np.exp(log_probs).cumsum(axis=1)
            actions = np.minimum((noise * cdf[:, -1:] > cdf).sum(axis=1), self.act_dim - 1)
            return actions, log_probs[np.arange(out.shape[0]), actions], value
        actions = out + self.std * noise
        logprob = -0.5 * np.add.reduce(noise * noise, axis=1) - self.logprob_offset
        return actions, logprob.astype(np.float32, copy=False), value

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The most likely action: the Gaussian mean, or the categorical argmax."""
        out = self.forward(obs)[0]
        return out.argmax(axis=1) if self.discrete else out.copy()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
