"""The naive per-member adaptation loop: the oracle for the batched engine.

This is how public MAML recommender code adapts a member: copy the meta block, make an
optimizer, run the steps on that member's support set, one member at a time. The tests
check the batched engine against it, and `bench/adapt_throughput.py` measures both.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from limaml.adaptation import MemberSupport
from limaml.model import LiMAML, MetaBlock


def _step_sizes(model: LiMAML, meta: MetaBlock) -> dict[str, torch.Tensor]:
    """Each meta-block parameter's inner step size, laid out like the parameter."""
    lr = model.inner_lr
    sizes = {"hidden.weight": lr["w1"], "hidden.bias": lr["b1"],
             "out.weight": lr["w2"], "out.bias": lr["b2"]}
    if meta.constant_input is not None:
        sizes["constant_input"] = lr["input"]
    width = model.config.member_field_dim
    for i, _ in enumerate(meta.field_embeddings):
        input_lr = lr["input"] if lr["input"].dim() == 0 else lr["input"][i * width:(i + 1) * width]
        sizes[f"field_embeddings.{i}.weight"] = input_lr  # broadcasts over table rows
    return sizes


def naive_adapt(model: LiMAML, member: MemberSupport, steps: int | None = None) -> np.ndarray:
    """[E] meta embedding of one member, adapted by a copied meta block and an optimizer."""
    steps = model.config.inner_steps if steps is None else steps
    device = model.device
    meta = copy.deepcopy(model.meta_block).train()
    for parameter in meta.parameters():
        parameter.requires_grad_(True)
    step_sizes = _step_sizes(model, meta)
    named = dict(meta.named_parameters())
    optimizer = torch.optim.SGD(meta.parameters(), lr=1.0)  # step sizes applied to the grads
    features = torch.as_tensor(member.features, device=device).unsqueeze(0)
    items = torch.as_tensor(member.items, device=device).unsqueeze(0)
    labels = torch.as_tensor(member.labels, device=device).unsqueeze(0)
    context = torch.as_tensor(member.context, device=device).reshape(
        1, len(member.items), model.config.context_dim)
    if len(member.items) > 0:
        for _ in range(steps):
            logits = model.global_block(meta(features), items, context)
            # each example weighs 1 / (n + n0): see adaptation.example_weights
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / max(
                1.0, len(member.items) + model.config.support_prior_count)
            optimizer.zero_grad()
            loss.backward(inputs=list(named.values()))  # leave the global block's grads alone
            with torch.no_grad():
                for name, parameter in named.items():
                    parameter.grad.mul_(step_sizes[name])
            optimizer.step()
    with torch.no_grad():
        return meta(features)[0].cpu().numpy()
