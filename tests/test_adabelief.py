from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import Tensor, nn

import distcolor.train.adabelief as adabelief_module
from distcolor.train.adabelief import AdaBelief

# Large enough that where eps goes (inside the root, accumulated in s) changes the result far
# beyond the tolerance; the default 1e-16 would hide a misplaced eps.
EPS = 1e-6
TOL = dict(rtol=1e-6, atol=1e-10)

_GEN = torch.Generator().manual_seed(1)
_X = torch.randn(8, 4, generator=_GEN, dtype=torch.float64)
_TARGET = torch.randn(8, 3, generator=_GEN, dtype=torch.float64)

# (param indices, group hyper-parameters); the other hyper-parameters come from the constructor.
GROUPINGS = {
    "one_group": [([0, 1, 2], dict(lr=1e-2))],
    "two_groups": [([0, 2], dict(lr=1e-2)), ([1], dict(lr=3e-2, betas=(0.9, 0.99)))],
}
WEIGHT_DECAYS = {
    "no_wd": dict(weight_decay=0.0),
    "decoupled_wd": dict(weight_decay=0.01, decoupled_weight_decay=True),
    "l2_wd": dict(weight_decay=0.01, decoupled_weight_decay=False),
}


def _make_params() -> list[Tensor]:
    """A weight matrix, a bias and a one-element scale, float64."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (3,), (1,)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _loss(params: list[Tensor]) -> Tensor:
    """Fixed nonconvex loss, so gradients change direction and size along the run."""
    w, b, c = params
    out = c * torch.sin(_X @ w.T + b)
    return ((out - _TARGET) ** 2).mean() + 0.1 * torch.cos(w).sum()


def _param_groups(params: list[Tensor], groups: list) -> list[dict]:
    return [{"params": [params[i] for i in idx], **hp} for idx, hp in groups]


def _run(opt: torch.optim.Optimizer, params: list[Tensor], steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()


def _reference(
    groups: list,
    steps: int,
    *,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool = True,
) -> list[Tensor]:
    """The paper's equations written out in float64; shares no code with AdaBelief."""
    params = _make_params()
    hyper = {}
    for idx, hp in groups:
        for i in idx:
            hyper[i] = {"betas": (0.5, 0.999), **hp}
    m = [torch.zeros_like(p) for p in params]
    s = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(_loss(params), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                lr, (b1, b2) = hyper[i]["lr"], hyper[i]["betas"]
                if weight_decay and decoupled_weight_decay:
                    p.copy_(p * (1 - lr * weight_decay))
                elif weight_decay:
                    g = g + weight_decay * p
                m[i] = b1 * m[i] + (1 - b1) * g
                s[i] = b2 * s[i] + (1 - b2) * (g - m[i]) ** 2 + eps
                m_hat = m[i] / (1 - b1**t)
                s_hat = s[i] / (1 - b2**t)
                p.copy_(p - lr * m_hat / (torch.sqrt(s_hat) + eps))
    return [p.detach() for p in params]


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("wd", WEIGHT_DECAYS)
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_reference_equations(grouping, wd, foreach):
    groups = GROUPINGS[grouping]
    params = _make_params()
    opt = AdaBelief(_param_groups(params, groups), eps=EPS, foreach=foreach, **WEIGHT_DECAYS[wd])
    _run(opt, params, 50)
    expected = _reference(groups, 50, eps=EPS, **WEIGHT_DECAYS[wd])
    torch.testing.assert_close([p.detach() for p in params], expected, **TOL)


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip(foreach):
    groups = GROUPINGS["two_groups"]
    kwargs = dict(eps=EPS, weight_decay=0.01, foreach=foreach)
    params = _make_params()
    opt = AdaBelief(_param_groups(params, groups), **kwargs)
    _run(opt, params, 20)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state_dict = torch.load(buffer, weights_only=True)

    resumed = copy.deepcopy(params)
    resumed_opt = AdaBelief(_param_groups(resumed, groups), **kwargs)
    resumed_opt.load_state_dict(state_dict)
    for p in resumed:
        state = resumed_opt.state[p]
        assert set(state) == {"step", "exp_avg", "exp_avg_var"}
        assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
        assert state["step"].item() == 20
        for name in ("exp_avg", "exp_avg_var"):
            assert state[name].shape == p.shape and state[name].dtype == p.dtype
    _run(resumed_opt, resumed, 30)

    expected = _reference(groups, 50, eps=EPS, weight_decay=0.01)
    torch.testing.assert_close([p.detach() for p in resumed], expected, **TOL)


def _mixed_params() -> list[Tensor]:
    gen = torch.Generator().manual_seed(2)
    specs = [
        ((5, 3), torch.float32),
        ((7,), torch.float32),
        ((), torch.float32),
        ((2, 3, 4), torch.float64),
        ((6,), torch.bfloat16),
        ((4,), torch.float32),  # gradient only every third step
        ((2,), torch.float32),  # never a gradient
    ]
    return [torch.randn(s, generator=gen).to(d).requires_grad_() for s, d in specs]


def _drive_mixed(foreach: bool, weight_decay: dict, steps: int = 30) -> tuple[list, AdaBelief]:
    params = _mixed_params()
    opt = AdaBelief(params, lr=1e-2, eps=1e-8, foreach=foreach, **weight_decay)
    gen = torch.Generator().manual_seed(3)
    for t in range(steps):
        for i, p in enumerate(params[:-1]):
            noise = torch.randn(p.shape, generator=gen).to(p.dtype)
            p.grad = None if i == 5 and t % 3 else noise + torch.sin(p.detach())
        opt.step()
    return params, opt


@pytest.mark.parametrize("wd", WEIGHT_DECAYS)
def test_foreach_matches_loop(wd):
    loop_params, loop_opt = _drive_mixed(False, WEIGHT_DECAYS[wd])
    foreach_params, foreach_opt = _drive_mixed(True, WEIGHT_DECAYS[wd])
    torch.testing.assert_close(foreach_params, loop_params, rtol=1e-6, atol=1e-7)
    for opt, params in ((loop_opt, loop_params), (foreach_opt, foreach_params)):
        assert [opt.state[p]["step"].item() for p in params[:-1]] == [30] * 5 + [10]
        assert params[-1] not in opt.state
        assert torch.equal(params[-1], _mixed_params()[-1])


def test_foreach_default_uses_the_loop_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(adabelief_module, "_foreach_adabelief", lambda *a, **k: calls.append(1))
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    AdaBelief([p]).step()
    assert calls == [] and (p < 0).all()
    AdaBelief([p], foreach=True).step()
    assert calls == [1]


@pytest.mark.parametrize("foreach", [False, True])
def test_constant_gradient_steps_are_not_adams(foreach):
    lr, b1, b2 = 1e-3, 0.5, 0.999
    g = torch.tensor([3.0, -0.2, 0.0], dtype=torch.float64)
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = AdaBelief([p], lr=lr, betas=(b1, b2), foreach=foreach)
    adam_p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([adam_p], lr=lr, betas=(b1, b2))
    p.grad, adam_p.grad = g.clone(), g.clone()
    opt.step()
    adam.step()
    # First step: m_hat = g and s_hat = (b1 g)^2 + eps / (1 - b2), so with eps ~ 0 the update is
    # lr / b1 = 2 lr per coordinate where Adam's is lr; a zero gradient moves nothing (no 0/0).
    torch.testing.assert_close(p.detach(), -lr / b1 * torch.sign(g), rtol=1e-6, atol=0)
    torch.testing.assert_close(adam_p.detach(), -lr * torch.sign(g), rtol=1e-6, atol=0)

    # The gradient keeps agreeing with its mean, so s shrinks and the steps grow ("belief").
    for _ in range(99):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
    assert (before - p.detach())[0] > 10 * lr


@pytest.mark.parametrize("foreach", [False, True])
def test_first_step_puts_eps_inside_the_root(foreach):
    lr, b1, b2, eps = 1e-3, 0.5, 0.999, 1e-3
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = AdaBelief([p], lr=lr, betas=(b1, b2), eps=eps, foreach=foreach)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    # g = 1: m_hat = 1, s_hat = b1^2 + eps / (1 - b2) = 0.25 + 1.
    expected = -lr / (math.sqrt(b1**2 + eps / (1 - b2)) + eps)
    torch.testing.assert_close(p.detach(), torch.tensor([expected], dtype=torch.float64), **TOL)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(lr=-1e-3), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\]"),
        (dict(betas=(0.5, -0.1)), r"betas\[1\]"),
        (dict(betas=(0.5,)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=rf"^AdaBelief: {name} "):
        AdaBelief([p], **kwargs)
    with pytest.raises(ValueError, match=rf"^AdaBelief: {name} "):
        AdaBelief([{"params": [p], **kwargs}])


@pytest.mark.parametrize("foreach", [False, True])
def test_sparse_gradients_are_rejected(foreach):
    emb = nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    opt = AdaBelief(emb.parameters(), foreach=foreach)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_minimises_least_squares():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(32, 8, generator=gen)
    b = a @ torch.randn(8, generator=gen)
    x = torch.zeros(8, requires_grad=True)
    opt = AdaBelief([x], lr=0.05)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = ((a @ x - b) ** 2).mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(200)]
    assert losses[-1] < losses[0] / 10
