"""Same-shape models trained as one stacked model: one forward pass (vmap), one fused Adam and one loss graph for all."""
from typing import Optional

__all__ = ["train_stacked"]


def train_stacked(data, tasks: tuple, configs: list, runtime, parts: Optional[list] = None,
                  labels: Optional[list] = None) -> list:
    """Train same-shape configurations as one stacked model; returns one heads.training.Outcome per config.

    `parts`: one (keep, part) per configuration, the training rows a member learns from (heads.training.Trainer),
    for the cross-validation members of heads.selection; None: every member learns from every row.

    Each configuration keeps what it would get alone with the same seed (a heads.training.Trainer each: its
    own initialisation, Adam (own lr / L2 coefficient) and warm-up + cosine schedule, task weights, validation,
    early stopping and best epoch) and the shared data order of heads.training.run_epochs. One forward pass
    serves all members (torch.func.vmap over stacked parameters: one batched matmul of the batch with the
    (G, H, D) stacked weights, not G small ones); a member that stopped early is carried but no longer updated.
    """
    from torch.func import functional_call, stack_module_state, vmap

    from omniart.heads.training import Trainer, run_epochs

    parts = parts or [(None, None)] * len(configs)
    labels = labels or [""] * len(configs)  # each member's progress prefix
    members = [Trainer(data, tasks, config, runtime, label, keep=keep, part=part)
               for config, (keep, part), label in zip(configs, parts, labels)]
    params, buffers = stack_module_state([member.model for member in members])
    stacked = {**params, **buffers}
    for index, member in enumerate(members):  # each member's tensors (its optimizer's too) become views of the stack
        for name, tensor in [*member.model.named_parameters(), *member.model.named_buffers()]:
            tensor.data = stacked[name].data[index]
    base = members[0].model
    # randomness "same": every member gets the dropout mask its one-by-one fit draws (they share the seed)
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None), randomness="same")

    joint = _JointAdam(members, params) if _JointAdam.fits(members) else None
    joint_loss = _JointLoss(members, tasks) if joint is not None and _JointLoss.fits(members) else None

    def update(active, outputs, targets, masks, rows):
        if joint_loss is not None:
            total = joint_loss(outputs, targets, masks, rows)
        else:
            total = sum(members[i].loss({t: outputs[t][i] for t in tasks}, targets, masks, rows) for i in active)
        for value in params.values():
            value.grad = None
        total.backward()
        if joint is not None:
            joint.step()
            return
        for i in active:
            for name, parameter in members[i].model.named_parameters():
                parameter.grad = params[name].grad[i]
            members[i].step()

    return run_epochs(members, data, configs[0], lambda x: forward(params, buffers, x), update)


class _JointAdam:
    """One fused Adam over the stacked parameters for members that share the learning rate and its schedule
    (a selection's candidates and cross-validation parts), each member's L2 coefficients added to its slice of the
    gradients first: the same update as each member's own Adam (elementwise, one step count), without a
    Python-level optimizer step per member (the cost of a stack of small models)."""

    def __init__(self, members: list, params: dict):
        import torch

        first = members[0]
        self.members, self.params = members, params
        # each member's (rows, 1) coefficients stacked (members, rows, 1): one multiply-add for the whole stack
        self.decay = {name: torch.stack([member.decay[name] for member in members])
                      for name in params if name in first.decay}
        # the priors centred at the discriminant (Trainer.step): each member's weight_decay * W_lda, subtracted
        self.anchor = {}
        for index, member in enumerate(members):
            if member.anchor is not None:
                _, start, coef, name = member.anchor
                target = self.anchor.setdefault(name, torch.zeros_like(params[name]))
                target[index, start:start + len(coef)] = coef * member.weight_decay["artist"]
        self.optimizer = torch.optim.Adam(list(params.values()), lr=first.config.lr, fused=True)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, first.schedule.lr_lambdas[0])
        for member in members:
            member.lr_source = self.optimizer

    @staticmethod
    def fits(members: list) -> bool:
        """Whether every member steps every batch with the same learning rate schedule and no extra parameters."""
        first = members[0]
        return all(member.config.lr == first.config.lr and member.config.warmup == first.config.warmup
                   and member.epochs == first.epochs and member.log_vars is None and member.config.patience is None
                   for member in members)

    def step(self) -> None:
        for name, decay in self.decay.items():
            self.params[name].grad.addcmul_(self.params[name].detach(), decay)  # in place: no temporary
        for name, anchor in self.anchor.items():
            self.params[name].grad.sub_(anchor)
        self.optimizer.step()
        self.schedule.step()


class _JointLoss:
    """Every member's loss L = sum_i w_i s_i L_i (heads.losses.combined_loss) at once over the stacked outputs
    (members, batch, ...): one graph of a few ops per task instead of one per member, each member's rows
    (its `keep`), year scale and Huber threshold, and task weights applied; each member's epoch sums kept."""

    def __init__(self, members: list, tasks: tuple):
        import torch

        self.members, self.tasks = members, tasks
        first = members[0]
        device = first.model.year_std.device
        rows = len(first.data.train)
        self.keep = None if all(m.keep is None for m in members) else torch.stack(
            [m.keep if m.keep is not None else torch.ones(rows, dtype=torch.bool, device=device) for m in members])
        self.beta = torch.tensor([m.year_huber for m in members], dtype=torch.float32, device=device)[:, None]
        self.class_weights = first.class_weights

    @staticmethod
    def fits(members: list) -> bool:
        """Members with the same class weights (the same data) and no learned task uncertainties."""
        first = members[0]
        return all(m.log_vars is None and (m.class_weights is None) == (first.class_weights is None) for m in members)

    def __call__(self, outputs: dict, targets: dict, masks: dict, rows):
        import torch
        import torch.nn.functional as F

        count = len(self.members)
        kept = self.keep[:, rows] if self.keep is not None else None
        losses = []
        for task in self.tasks:
            output, mask = outputs[task].float(), masks[task]
            weights = mask[None].expand(count, -1) if kept is None else mask[None] & kept
            weights = weights.to(output.dtype)
            if task == "artist":
                target = torch.where(mask, targets[task], torch.zeros_like(targets[task]))
                per_row = F.cross_entropy(output.flatten(0, 1), target.repeat(count), reduction="none").view(count, -1)
                if self.class_weights is not None:
                    weights = weights * self.class_weights[target][None]
            elif task == "year":
                error = (output - torch.where(mask, targets[task], torch.zeros_like(targets[task]))[None]).abs()
                # smooth L1 with each member's threshold (0: the absolute error)
                per_row = torch.where(error < self.beta, 0.5 * error * error / self.beta.clamp_min(1e-12),
                                      error - 0.5 * self.beta)
            else:
                per_row = F.binary_cross_entropy_with_logits(output, targets[task].float()[None].expand_as(output),
                                                             reduction="none").sum(-1)
            losses.append((per_row * weights).sum(1) / weights.sum(1).clamp_min(1e-12))
        per_task = torch.stack(losses, 1)  # (members, tasks)
        factors = torch.tensor([[m.weights[t] * m.scales[t] for t in self.tasks] for m in self.members],
                               dtype=per_task.dtype, device=per_task.device)
        totals = (per_task * factors).sum(1)
        values = torch.cat([totals[:, None], per_task], 1).detach()
        for index, member in enumerate(self.members):
            member.sums = values[index] if member.sums is None else member.sums + values[index]
        return totals.sum()
