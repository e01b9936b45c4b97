"""Lottery-ticket pruning: global masks, exact sparsity, enforcement, rewinding, sync."""

import json
import math

import pytest
import torch
from torch import nn

from distcolor.backends.ddp import NetworkUpdate
from distcolor.config import ConfigError, PruneConfig, load_config
from distcolor.errors import UserError
from distcolor.models.patchgan import PatchDiscriminator
from distcolor.models.unet import UNetGenerator
from distcolor.prune.lottery import LotteryTicket
from distcolor.prune.masks import (
    Masks,
    alive_after,
    compute_global_masks,
    keep_largest,
    masks_fingerprint,
    prunable_weights,
)
from distcolor.train.ema import GeneratorEMA
from distcolor.train.optim import make_optimizer
from tests.test_distributed import torchrun


def small_nets(seed: int = 0) -> tuple[UNetGenerator, PatchDiscriminator]:
    torch.manual_seed(seed)
    return UNetGenerator(width=8, depth=5), PatchDiscriminator(width=8, layers=2)


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the conv layers in the order a forward pass runs them."""
    names, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name: names.append(n)))
    model(x)
    for h in hooks:
        h.remove()
    return names


def test_prunable_weights_are_every_conv_and_transposed_conv_weight_only():
    G, D = small_nets()
    weights = prunable_weights(G)
    transposed = [n for n, m in G.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == 5 and all(f"{n}.weight" in weights for n in transposed)
    assert len(weights) == 10 and all(w.dim() == 4 for w in weights.values())
    assert not any("bias" in n for n in weights)
    # Norm weights and biases are never candidates.
    norm_params = {
        id(p) for m in G.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    }
    assert not norm_params & {id(w) for w in weights.values()}
    assert len(prunable_weights(D)) == 4


@pytest.mark.parametrize("which", ["G", "D"])
def test_first_and_last_layers_are_the_forward_order_edges_and_can_be_kept(which):
    G, D = small_nets()
    model, x = (G, torch.randn(1, 1, 32, 32)) if which == "G" else (D, torch.randn(1, 3, 32, 32))
    order = forward_order(model.eval(), x)
    assert model.edge_layers == (order[0], order[-1])
    kept = prunable_weights(model, keep_first_last=True)
    assert set(prunable_weights(model)) - set(kept) == {f"{order[0]}.weight", f"{order[-1]}.weight"}


def test_select_smallest_marks_exactly_the_k_smallest_alive_entries():
    torch.manual_seed(1)
    values = [torch.randn(1000), torch.randn(337) * 3]
    alive = [torch.rand(1000) > 0.3, torch.rand(337) > 0.3]
    flat, was = torch.cat(values).abs(), torch.cat(alive)
    for count in (0, 1, 250, int(was.sum())):
        keep, threshold = keep_largest(list(zip(values, alive, strict=True)), count)
        chosen = was & ~torch.cat(keep)
        assert not (torch.cat(keep) & ~was).any()  # the dead stay dead
        assert int(chosen.sum()) == count and not (chosen & ~was).any()
        expected = torch.sort(flat[was]).values
        if count:
            assert threshold == expected[count - 1].item()
            rest = flat[was & ~chosen]
            assert flat[chosen].max() <= (rest.min() if rest.numel() else math.inf)


def test_ties_at_the_threshold_still_prune_exactly_the_asked_number_first_in_order():
    values = [torch.tensor([0.5, 0.1, 0.1, 0.3, 0.1]), torch.tensor([0.1, 0.2])]
    alive = [torch.ones(5, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    keep, threshold = keep_largest(list(zip(values, alive, strict=True)), 2)
    assert threshold == pytest.approx(0.1)
    assert keep[0].tolist() == [True, False, False, True, True]
    assert keep[1].tolist() == [True, True]
    keep, _ = keep_largest(list(zip(values, alive, strict=True)), 4)
    assert keep[0].tolist() == [True, False, False, True, False]
    assert keep[1].tolist() == [False, True]


def test_magnitude_ranking_covers_negative_zero_and_other_dtypes():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        v = torch.tensor([-3.0, 2.0, -0.0, 0.5, -1.0], dtype=dtype)
        keep, _ = keep_largest([(v, torch.ones(5, dtype=torch.bool))], 3)
        assert keep[0].tolist() == [True, True, False, False, False]


def test_alive_zeros_can_be_pruned_and_dead_entries_never_count():
    # Dead entries hold stale non-zero values here: they must not take part at all.
    v = torch.tensor([0.0, 9.0, 0.0, 0.2, 0.0, 0.3])
    alive = torch.tensor([True, False, True, True, False, True])
    keep, threshold = keep_largest([(v, alive)], 1)
    assert keep[0].tolist() == [False, False, True, True, False, True] and threshold == 0.0
    keep, threshold = keep_largest([(v, alive)], 3)
    assert keep[0].tolist() == [False, False, False, False, False, True]
    assert threshold == pytest.approx(0.2)
    with pytest.raises(ValueError, match="cannot prune 5 entries: 4 are alive"):
        keep_largest([(v, alive)], 5)


@pytest.mark.parametrize("keep_first_last", [False, True])
def test_sparsity_after_r_rounds_is_exactly_one_minus_0_8_to_the_r(keep_first_last):
    G, _ = small_nets()
    masks = Masks(prunable_weights(G, keep_first_last=keep_first_last))
    loud = "down.2.0.weight"  # 10x larger weights: a global ranking spares this layer
    with torch.no_grad():
        masks.weights[loud].mul_(10)
    total = masks.total()
    previous = {n: m.clone() for n, m in masks.keep.items()}
    for r in range(1, 7):
        keep, _ = compute_global_masks(
            masks.weights, masks.keep, alive_after_round=alive_after(total, rate=0.2, rounds=r)
        )
        masks.set(keep)
        masks.zero_weights()
        assert abs(masks.alive() - total * 0.8**r) <= 0.5  # to within rounding of one weight
        assert all(not (keep[n] & ~previous[n]).any() for n in keep)  # nothing regrows
        previous = {n: m.clone() for n, m in keep.items()}
    overall, per_layer = masks.sparsity()
    assert overall == pytest.approx(1 - 0.8**6, abs=1 / total)
    # Global, not per layer: the loud layer keeps (nearly) all its weights.
    assert per_layer[loud] < 0.15 and min(v for k, v in per_layer.items() if k != loud) > 0.6


def zero_bits(t: torch.Tensor) -> bool:
    """True if every entry is +0.0 (bit pattern 0: masked_fill, not a multiply's -0.0)."""
    return bool((t.reshape(-1).view(torch.int32) == 0).all())


@pytest.mark.parametrize(
    "optimizer, scaled", [("adam", False), ("adabelief", False), ("adam", True)]
)
def test_pruned_weights_stay_zero_and_get_no_momentum_through_training(optimizer, scaled):
    cfg = load_config(
        None, [f"train.optimizer={optimizer}", "train.weight_decay=0.1", "train.max_grad_norm=1"]
    ).train
    G, _ = small_nets()
    update = NetworkUpdate(
        G,
        make_optimizer(G.parameters(), lr=1e-2, cfg=cfg),
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None,
        max_grad_norm=1.0,
    )
    masks = update.masks = Masks(prunable_weights(G))
    x = torch.randn(4, 1, 32, 32)
    for step in range(6):
        if step == 2:  # prune after some momentum has built up
            keep, _ = compute_global_masks(masks.weights, masks.keep, alive_after_round=50_000)
            masks.set(keep)
            masks.zero_weights()
            masks.zero_optimizer_state(update.optimizer)
        update.backward(G(x).square().mean())
        assert update.step()[0]
    for name, w in masks.weights.items():
        pruned = ~masks.keep[name]
        assert zero_bits(w.detach()[pruned])
        state = update.optimizer.state[w]
        assert zero_bits(state["exp_avg"][pruned])  # no momentum at pruned positions
        assert not zero_bits(state["exp_avg"][~pruned])  # the survivors do learn
    assert masks.alive() == 50_000


def ticket(rewind: str, **extra) -> tuple[LotteryTicket, UNetGenerator, PatchDiscriminator]:
    G, D = small_nets()
    cfg = PruneConfig(at_steps=[2, 4], rewind=rewind, **extra)
    t = LotteryTicket(cfg, generator=G, discriminator=D)
    t.start()
    return t, G, D


def train_some(G, D, optimizers, steps: int = 1) -> None:
    for _ in range(steps):
        for net, opt in ((G, optimizers["G"]), (D, optimizers["D"])):
            x = torch.randn(2, 1, 32, 32)
            out = G(x) if net is G else D(torch.randn(2, 3, 32, 32))
            out.square().mean().backward()
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("rewind", ["init", "step"])
def test_rewinding_restores_the_saved_values_exactly(rewind):
    t, G, D = ticket(rewind, rewind_step=1, discriminator=True)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2) for n, m in (("G", G), ("D", D))}
    d_init = {k: v.clone() for k, v in D.state_dict().items()}
    expected = {k: v.clone() for k, v in G.state_dict().items()}  # G at init
    train_some(G, D, opts)
    t.snapshot_if_due(1)
    if rewind == "step":
        expected = {k: v.clone() for k, v in G.state_dict().items()}  # G after step 1
    train_some(G, D, opts)
    ema = GeneratorEMA(G, half_life=10, rampup=None)
    report = t.prune_round(2, optimizers=opts, ema=ema)
    assert report["G"]["sparsity"] == pytest.approx(0.2, abs=1e-5)
    masks = t.masks["G"]
    for name, value in G.state_dict().items():
        want = expected[name]
        if name in masks.keep:
            keep = masks.keep[name]
            assert torch.equal(value[keep], want[keep]) and zero_bits(value[~keep])
        else:
            assert torch.equal(value, want), name  # norms, biases, running statistics
    for name, value in D.state_dict().items():  # D back at its own initialisation
        keep = t.masks["D"].keep.get(name)
        want = d_init[name] if keep is None else torch.where(keep, d_init[name], 0.0)
        assert torch.equal(value, want), name
    assert not opts["G"].state and not opts["D"].state  # fresh optimizers
    assert all(
        torch.equal(a, b) for a, b in zip(ema.module.parameters(), G.parameters(), strict=True)
    )


def test_without_rewinding_training_goes_on_from_the_pruned_weights():
    t, G, D = ticket("none")
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2) for n, m in (("G", G), ("D", D))}
    train_some(G, D, opts, steps=2)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    ema = GeneratorEMA(G, half_life=10, rampup=None)
    t.prune_round(2, optimizers=opts, ema=ema)
    for name, keep in t.masks["G"].keep.items():
        assert torch.equal(G.state_dict()[name][keep], before[name][keep])
        assert zero_bits(ema.module.state_dict()[name][~keep])
        assert zero_bits(opts["G"].state[G.get_parameter(name)]["exp_avg_sq"][~keep])
    assert opts["G"].state  # moments kept (zeroed where pruned)
    assert "D" not in t.masks  # the discriminator is pruned only when asked


def test_state_round_trip_continues_the_schedule():
    t, G, D = ticket("init")
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2) for n, m in (("G", G), ("D", D))}
    train_some(G, D, opts)
    t.prune_round(2, optimizers=opts)
    state = t.state_dict()
    G2, D2 = small_nets(seed=5)
    G2.load_state_dict(G.state_dict())
    t2 = LotteryTicket(t.cfg, generator=G2, discriminator=D2)
    t2.load_state_dict(state)
    assert t2.rounds_done == 1 and not t2.round_due(2) and t2.round_due(4)
    assert masks_fingerprint(t2.masks["G"].keep) == masks_fingerprint(t.masks["G"].keep)
    assert all(torch.equal(t2.rewind_to[k], t.rewind_to[k]) for k in t.rewind_to)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["prune.at_steps=[100, 900]"], "prune.at_steps: step 900 is beyond train.max_steps"),
        (["prune.at_steps=[200, 100]"], "prune.at_steps: must be increasing"),
        (
            ["prune.at_steps=[100]", "prune.rewind=step", "prune.rewind_step=100"],
            "prune.rewind_step: 100 must come before the first round",
        ),
        (["prune.at_steps=[100]", "prune.rate=1.0"], "prune.rate"),
    ],
)
def test_bad_prune_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def run_check(tmp_path, nproc: int, *args: str) -> list[dict]:
    proc = torchrun(nproc, "tests/prune_check.py", "--out", str(tmp_path), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_ranks_with_perturbed_weights_still_choose_identical_masks(tmp_path):
    ranks = run_check(tmp_path, 2, "--rounds", "5", "--noise", "1e-3")
    for r in range(5):
        rows = [rank["rounds"][r] for rank in ranks]
        assert rows[0]["fingerprint"] == rows[1]["fingerprint"]
        assert rows[0]["alive"] == rows[0]["target"] == round(ranks[0]["total"] * 0.8 ** (r + 1))
        assert all(row["zeros_at_pruned"] for row in rows)
        # The noise matters: chosen alone, from its own copy, each rank would differ.
        assert rows[0]["alone"] != rows[1]["alone"]


def test_sharded_selection_equals_one_process_sort_and_ties_prune_exact_counts(tmp_path):
    plain = run_check(tmp_path, 3, "--rounds", "4")
    for r in range(4):
        rows = [rank["rounds"][r] for rank in plain]
        assert len({(row["fingerprint"], row["alone"]) for row in rows}) == 1
        assert rows[0]["fingerprint"] == rows[0]["alone"]  # what one process would choose
        assert rows[0]["pruned_max"] <= rows[0]["kept_min"]
        assert rows[0]["alive"] == rows[0]["target"]
    tied = run_check(tmp_path, 3, "--rounds", "4", "--quantize", "0.01")
    for r in range(4):
        rows = [rank["rounds"][r] for rank in tied]
        assert len({row["fingerprint"] for row in rows}) == 1
        assert all(row["alive"] == row["target"] for row in rows)
        assert rows[0]["pruned_max"] <= rows[0]["kept_min"]


def test_a_rank_whose_masks_differ_stops_the_run_naming_it(tmp_path):
    ranks = run_check(tmp_path, 3, "--rounds", "1", "--flip-on", "2")
    for rank in ranks:  # every rank raises, with the same message
        assert rank["error"].startswith("pruning masks differ between ranks in the check (G on ")
        assert "G on rank(s) [2]" in rank["error"]


def test_the_average_restarts_its_ramp_up_at_each_rewind():
    t, G, D = ticket("init")
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2) for n, m in (("G", G), ("D", D))}
    assert t.ema_restart_step() == 0
    t.prune_round(2, optimizers=opts)
    assert t.ema_restart_step() == 2
    t2, *_ = ticket("none")
    t2.prune_round(2, optimizers=opts)
    assert t2.ema_restart_step() == 0  # nothing was rewound: the average goes on


def test_a_network_with_nothing_to_prune_is_a_clear_error():
    G, _ = small_nets()
    D = nn.Sequential(nn.BatchNorm2d(3))  # no conv at all
    with pytest.raises(UserError, match="prune: D has no prunable layer"):
        LotteryTicket(PruneConfig(at_steps=[1], discriminator=True), generator=G, discriminator=D)
