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
