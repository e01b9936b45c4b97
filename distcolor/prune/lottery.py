"""Lottery-ticket rounds: when to prune, what to rewind, and the state that resumes them.

    step == prune.rewind_step   snapshot G (all parameters and buffers) to rewind to
    step in prune.at_steps      a round:
        1. new global masks per network (distcolor/prune/masks.py), the same on every rank
        2. rewind (prune.rewind: init or step): G's survivors, norms and biases go back to
           the snapshot; D back to its initialisation (prune.reset_discriminator); both
           optimizers start fresh and the EMA restarts from the rewound G
           no rewind: training goes on from the pruned weights; optimizer moments and the
           EMA are zeroed at the pruned positions
        3. masks applied to the weights, the EMA and (kept) optimizer state; ranks compare
           mask fingerprints

Choices, and why: the learning rate follows the global step and does not restart after a
rewind, so the run keeps one schedule and `train.max_steps` stays its length; optimizer
moments describe a trajectory a rewind has undone, so rewinding drops them (Chen et al.
2021 start each round's optimizers fresh); the fp16 loss scale is kept (it tracks gradient
magnitudes, which a rewind does not change in kind).
"""

from __future__ import annotations

import torch
from torch import nn

from distcolor.config import PruneConfig
from distcolor.errors import UserError
from distcolor.prune.masks import Masks, alive_after, check_masks_agree, prunable_weights


class PlainNetwork:
    """A network whose parameters are whole on every rank (one process, DDP). The ZeRO
    counterpart, with the same methods, is `distcolor.backends.zero_shards.ZeroNetwork`."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def masks(self, *, keep_first_last: bool) -> Masks:
        return Masks(prunable_weights(self.module, keep_first_last=keep_first_last))

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the state (parameters and buffers), as a rewind target."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    @staticmethod
    def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
        optimizer.state.clear()  # Adam and AdaBelief start afresh at their next step


class LotteryTicket:
    """Iterative magnitude pruning with rewinding. `generator` and `discriminator` are the
    plain (unwrapped) modules, or `ZeroNetwork`s under DeepSpeed."""

    def __init__(self, cfg: PruneConfig, *, generator, discriminator):
        self.cfg = cfg
        self.networks = {
            name: net if hasattr(net, "snapshot") else PlainNetwork(net)
            for name, net in (("G", generator), ("D", discriminator))
        }
        keep = cfg.keep_first_last
        self.masks = {"G": self.networks["G"].masks(keep_first_last=keep)}
        if cfg.discriminator:
            self.masks["D"] = self.networks["D"].masks(keep_first_last=keep)
        empty = [name for name, masks in self.masks.items() if not masks.weights]
        if empty:
            raise UserError(f"prune: {' and '.join(empty)} has no prunable layer left to prune")
        self.rounds_done = 0
        self.rewind_to: dict[str, torch.Tensor] | None = None  # G at the rewind point
        self.d_init: dict[str, torch.Tensor] | None = None  # D at initialisation
        self.history: list[dict] = []  # one entry per round: step, thresholds, sparsities

    @property
    def rewinds(self) -> bool:
        return self.cfg.rewind != "none"

    def start(self) -> None:
        """Snapshots a new run needs at step 0 (before the first update)."""
        if self.rewinds and self.cfg.reset_discriminator:
            self.d_init = self.networks["D"].snapshot()
        self.snapshot_if_due(0)

    def snapshot_if_due(self, step: int) -> None:
        """Keep G's weights after `step` when that is the rewind point."""
        point = 0 if self.cfg.rewind == "init" else self.cfg.rewind_step
        if self.rewinds and step == point:
            self.rewind_to = self.networks["G"].snapshot()

    def round_due(self, step: int) -> bool:
        schedule = self.cfg.at_steps
        return self.rounds_done < len(schedule) and step == schedule[self.rounds_done]

    def prune_round(
        self, step: int, *, optimizers: dict[str, torch.optim.Optimizer], ema=None
    ) -> dict:
        """Prune, rewind and enforce (a collective: every rank calls it at the same step);
        returns the round's report: threshold and sparsity per network and per layer."""
        done = self.rounds_done + 1
        report: dict = {"step": step, "round": done}
        for name, masks in self.masks.items():
            target = alive_after(masks.total(), rate=self.cfg.rate, rounds=done)
            keep, threshold = masks.select(alive_after_round=target)
            masks.set(keep)
            overall, per_layer = masks.sparsity()
            report[name] = {"threshold": threshold, "sparsity": overall, "layers": per_layer}
        if self.rewinds:
            self._rewind(optimizers, ema)
        for name, masks in self.masks.items():
            masks.zero_weights()
            if not self.rewinds:
                masks.zero_optimizer_state(optimizers[name])
        if ema is not None:
            self.masks["G"].zero_in(ema.module)
        self.rounds_done = done
        check_masks_agree(self.keep_masks(), when=f"after pruning round {done}")
        summary = {
            n: {"threshold": report[n]["threshold"], "sparsity": report[n]["sparsity"]}
            for n in self.masks
        }
        self.history.append({"step": step, **summary})
        return report

    def _rewind(self, optimizers: dict[str, torch.optim.Optimizer], ema) -> None:
        G, D = self.networks["G"], self.networks["D"]
        G.load(self.rewind_to)
        if self.cfg.reset_discriminator:
            D.load(self.d_init)
        for name, optimizer in optimizers.items():
            self.networks[name].reset_optimizer(optimizer)
        if ema is not None:
            ema.module.load_state_dict(self.rewind_to)

    def ema_restart_step(self) -> int:
        """The step of the last rewind (0 if none): the EMA restarted there, and its ramp-up
        counts images from it, so the rewound weights are not dragged along for long."""
        rewound = [h["step"] for h in self.history] if self.rewinds else []
        return rewound[-1] if rewound else 0

    def keep_masks(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: masks.keep for name, masks in self.masks.items()}

    def state_dict(self) -> dict:
        return {
            "round": self.rounds_done,
            "masks": {n: {k: v.cpu() for k, v in m.items()} for n, m in self.keep_masks().items()},
            "rewind": {"G": self.rewind_to, "D_init": self.d_init},
            "history": self.history,
            "settings": self.cfg.model_dump(mode="json"),
        }

    def check_resumable(self, state: dict, *, step: int) -> None:
        """Refuse to continue a schedule with other settings: rounds done under one rate,
        rewind or layer set do not continue under another. Rounds still to come may move,
        but not to steps already passed."""
        before, now = state.get("settings", {}), self.cfg.model_dump(mode="json")
        changed = [
            f"prune.{key} {before.get(key)} -> {value}"
            for key, value in now.items()
            if key != "at_steps" and before.get(key) != value
        ]
        done = int(state["round"])
        past = before.get("at_steps", [])[:done]
        if now["at_steps"][:done] != past:
            changed.append(f"prune.at_steps (rounds done at {past})")
        late = [s for s in now["at_steps"][done:] if s <= step]
        if late:
            changed.append(f"prune.at_steps {late} (already passed at step {step})")
        if changed:
            raise UserError(
                "--resume: the checkpoint's pruning schedule differs: " + "; ".join(changed)
            )

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved schedule: masks (enforced at once), rounds done, snapshots."""
        self.rounds_done = int(state["round"])
        self.rewind_to = state["rewind"]["G"]
        self.d_init = state["rewind"]["D_init"]
        self.history = list(state.get("history", []))
        for name, masks in self.masks.items():
            saved = state["masks"].get(name)
            if saved is not None and self.rounds_done:
                masks.set(saved)
                masks.zero_weights()
        check_masks_agree(self.keep_masks(), when="after resuming")
