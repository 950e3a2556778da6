import pytest
import torch

from ppo_cli import losses


def test_clipped_surrogate_matches_formula():
    ratio = torch.tensor([0.5, 1.1, 1.5, 0.7, 1.0, 2.0])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -2.0, -1.0])
    expected = []
    for r, a in zip(ratio.tolist(), adv.tolist()):
        expected.append(max(-a * r, -a * min(max(r, 0.8), 1.2)))
    loss = losses.clipped_surrogate(ratio, adv, 0.2)
    assert torch.isclose(loss, torch.tensor(sum(expected) / 6))
    # by hand: 0.5 -> -0.5; 1.1 -> -1.1; 1.5 -> -1.2 (clipped); 0.7 (A<0) -> 0.8; 1.0 -> 2.0; 2.0 -> 2.0
    assert expected == pytest.approx([-0.5, -1.1, -1.2, 0.8, 2.0, 2.0])


def test_dual_clip_bounds_negative_advantages_only():
    ratio = torch.tensor([10.0, 10.0, 0.5])
    adv = torch.tensor([-1.0, 1.0, -1.0])
    plain = losses.clipped_surrogate(ratio, adv, 0.2)
    dual = losses.clipped_surrogate(ratio, adv, 0.2, dual_clip=3.0)
    # A<0, r=10: plain loss max(10, 1.2)=10, dual min(10, 3)=3; A>0: -1.2 either way; r=0.5, A<0: 0.8
    assert torch.isclose(plain, torch.tensor((10.0 - 1.2 + 0.8) / 3))
    assert torch.isclose(dual, torch.tensor((3.0 - 1.2 + 0.8) / 3))


def test_value_loss_clipped_and_unclipped():
    v = torch.tensor([1.0, 3.0, 0.0])
    old = torch.tensor([0.0, 2.9, 0.0])
    ret = torch.tensor([2.0, 2.0, 1.0])
    unclipped = losses.value_loss(v, old, ret, None)
    assert torch.isclose(unclipped, torch.tensor(0.5 * (1.0 + 1.0 + 1.0) / 3))
    clipped = losses.value_loss(v, old, ret, 0.2)
    # v=1 clipped to 0.2: err (0.2-2)^2 = 3.24 > 1; v=3 within 0.1: 1 vs (3-2)^2; v=0: 1
    assert torch.isclose(clipped, torch.tensor(0.5 * (3.24 + 1.0 + 1.0) / 3))


def test_approx_kl_and_clip_fraction():
    logratio = torch.log(torch.tensor([1.0, 2.0, 0.5]))
    kl = losses.approx_kl(logratio)
    expected = ((1 - 1 - 0.0) + (2 - 1 - torch.log(torch.tensor(2.0))) + (0.5 - 1 - torch.log(torch.tensor(0.5)))) / 3
    assert torch.isclose(kl, expected)
    assert losses.approx_kl(torch.zeros(4)) == 0
    assert losses.clip_fraction(torch.tensor([1.0, 1.3, 0.7, 1.1]), 0.2) == 0.5


@pytest.mark.parametrize("clip_vloss, dual_clip, ent_coef", [
    (False, None, 0.0), (True, None, 0.0), (False, 3.0, 0.01), (True, 2.0, 0.003)])
def test_gaussian_ppo_loss_has_the_value_and_gradient_of_the_composed_terms(clip_vloss, dual_clip, ent_coef):
    torch.manual_seed(0)
    batch, act_dim, clip = 256, 3, 0.2
    mean = torch.randn(batch, act_dim, dtype=torch.float64, requires_grad=True)
    log_std = (0.3 * torch.randn(act_dim, dtype=torch.float64)).requires_grad_()
    value = torch.randn(batch, dtype=torch.float64, requires_grad=True)
    actions = mean.detach() + 0.5 * torch.randn(batch, act_dim, dtype=torch.float64)
    old_values = value.detach() + 0.3 * torch.randn(batch, dtype=torch.float64)  # some beyond the clip
    returns, advantages = torch.randn(batch, dtype=torch.float64), torch.randn(batch, dtype=torch.float64)
    advantages[:8] = 0.0
    # old log-probs spread so that ratios fall inside and on both sides outside [1 - clip, 1 + clip]
    std = log_std.detach().exp()
    logprob = (-0.5 * (((actions - mean.detach()) / std) ** 2).sum(1) - log_std.detach().sum()
               - 0.5 * losses.LOG_2PI * act_dim)
    old_logprobs = logprob + 0.4 * torch.randn(batch, dtype=torch.float64)

    def composed():
        z = (actions - mean) / log_std.exp()
        lp = -0.5 * (z * z).sum(1) - log_std.sum() - 0.5 * losses.LOG_2PI * act_dim
        ratio = torch.exp(lp - old_logprobs)
        pg = losses.clipped_surrogate(ratio, advantages, clip, dual_clip)
        v = losses.value_loss(value, old_values, returns, clip if clip_vloss else None)
        ent = log_std.sum() + (0.5 + 0.5 * losses.LOG_2PI) * act_dim
        return pg - ent_coef * ent + 0.25 * v, torch.stack((pg, v, ent)), lp - old_logprobs

    ref, ref_terms, ref_logratio = composed()
    ref_grads = torch.autograd.grad(ref, (mean, log_std, value))
    loss, terms, logratio = losses.GaussianPPOLoss.apply(mean, log_std, value, actions, old_logprobs, old_values,
                                                         returns, advantages, clip, dual_clip, clip_vloss,
                                                         ent_coef, 0.25)
    grads = torch.autograd.grad(loss, (mean, log_std, value))
    ratio = ref_logratio.exp()
    assert ((ratio < 1 - clip) & (advantages < 0)).sum() > 5 and ((ratio > 1 + clip) & (advantages > 0)).sum() > 5
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms, ref_terms.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logratio, ref_logratio.detach(), rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not terms.requires_grad and not logratio.requires_grad
