import math

import pytest
import torch

from distcolor.train.losses import GANObjective, d_loss, g_adversarial_loss


def test_lsgan_is_mse_towards_one_and_zero():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -1.0])
    d = d_loss(real, fake, "lsgan")
    assert d["real"].item() == pytest.approx((0 + 1) / 2)
    assert d["fake"].item() == pytest.approx((0.25 + 1) / 2)
    assert d["total"].item() == pytest.approx(0.5 * (0.5 + 0.625))
    assert g_adversarial_loss(fake, "lsgan").item() == pytest.approx((0.25 + 4) / 2)


def test_vanilla_is_bce_on_logits():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 3.0])

    def softplus(x):
        return math.log1p(math.exp(x))

    d = d_loss(real, fake, "vanilla")
    # -log sigmoid(x) = softplus(-x); -log(1 - sigmoid(x)) = softplus(x)
    assert d["real"].item() == pytest.approx((softplus(-2.0) + softplus(1.0)) / 2)
    assert d["fake"].item() == pytest.approx((softplus(0.0) + softplus(3.0)) / 2)
    # non-saturating generator loss: -log D(fake)
    g = g_adversarial_loss(fake, "vanilla").item()
    assert g == pytest.approx((softplus(0.0) + softplus(-3.0)) / 2)


def test_losses_are_float32_under_low_precision_scores():
    scores = torch.randn(4, 1, 8, 8).to(torch.bfloat16)
    for kind in ("lsgan", "vanilla"):
        assert d_loss(scores, scores, kind)["total"].dtype == torch.float32
        assert g_adversarial_loss(scores, kind).dtype == torch.float32


def test_objective_feeds_lightness_chroma_pairs_and_weights_l1():
    seen = []
    weight = torch.ones((), requires_grad=True)

    def critic(pairs):
        seen.append(pairs)
        return weight * pairs.mean(dim=(1, 2, 3), keepdim=True)

    lightness = torch.full((2, 1, 4, 4), 0.1)
    chroma = torch.full((2, 2, 4, 4), 0.3)
    fake = torch.full((2, 2, 4, 4), 0.2, requires_grad=True)
    objective = GANObjective(gan_loss="lsgan", l1_weight=100.0)
    d = objective.discriminator(critic, lightness, chroma, fake)
    assert [p.shape[1] for p in seen] == [3, 3]
    assert torch.equal(seen[0][:, :1], lightness) and torch.equal(seen[0][:, 1:], chroma)
    assert torch.equal(seen[1][:, 1:], fake.detach())
    d["total"].backward()
    assert fake.grad is None and weight.grad is not None  # D's loss never reaches G
    g = objective.generator(critic, lightness, chroma, fake)
    assert g["l1"].item() == pytest.approx(0.1)
    assert g["total"].item() == pytest.approx(g["adv"].item() + 100.0 * 0.1)
    g["total"].backward()
    assert fake.grad is not None


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        GANObjective(gan_loss="wgan")
