"""The inner loop: adapt the meta block to many members at once.

One pure function, `adapt`, serves meta-training (differentiable, second- or first-order)
and online adaptation (the `AdaptationEngine` the adaptation workers call). Members are
batched by giving each its own copy of the meta-block weights along a leading dimension
and padding support sets to a common length with a mask; each member's loss is the mean
over its own support examples, so the summed loss's gradient with respect to one member's
weights is exactly that member's own gradient. The global block's weights are shared.

This module imports only torch and numpy, so it runs on a GPU machine without the
streaming stack.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad

from limaml.model import AdaptedParams, GlobalBlock, LiMAML, meta_forward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberSupport:
    """One member's meta features and recent interactions, oldest first."""

    features: np.ndarray  # [n_fields] int64 meta-feature codes
    items: np.ndarray  # [k] int64 item indices
    labels: np.ndarray  # [k] float32 in {0, 1}
    context: np.ndarray  # [k, C] float32


@dataclass(frozen=True)
class SupportBatch:
    """Support sets of B members padded to a common length K."""

    member_features: Tensor  # [B, n_fields] int64
    items: Tensor  # [B, K] int64, 0 (the OOV item) where padded
    labels: Tensor  # [B, K] float32
    context: Tensor  # [B, K, C] float32
    mask: Tensor  # [B, K] bool, True for real examples

    @classmethod
    def from_members(cls, members: Sequence[MemberSupport], context_dim: int,
                     device: torch.device | str = "cpu") -> SupportBatch:
        """Pad each member's support set to the longest one in the batch."""
        batch = len(members)
        length = max((len(m.items) for m in members), default=0)
        n_fields = members[0].features.shape[0] if members else 0
        features = np.zeros((batch, n_fields), dtype=np.int64)
        items = np.zeros((batch, length), dtype=np.int64)
        labels = np.zeros((batch, length), dtype=np.float32)
        context = np.zeros((batch, length, context_dim), dtype=np.float32)
        mask = np.zeros((batch, length), dtype=bool)
        for row, member in enumerate(members):
            k = len(member.items)
            features[row] = member.features
            items[row, :k] = member.items
            labels[row, :k] = member.labels
            context[row, :k] = member.context.reshape(k, context_dim)
            mask[row, :k] = True
        return cls(*(torch.from_numpy(a).to(device) for a in (features, items, labels, context, mask)))

    def to(self, device: torch.device | str) -> SupportBatch:
        return SupportBatch(*(t.to(device) for t in (self.member_features, self.items, self.labels,
                                                       self.context, self.mask)))

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def rows(self, start: int, stop: int) -> SupportBatch:
        return SupportBatch(*(t[start:stop] for t in (self.member_features, self.items, self.labels,
                                                       self.context, self.mask)))


def example_weights(mask: Tensor, prior_count: float = 0.0) -> Tensor:
    """[B, K] weights of each member's examples: 1 / (n + prior_count) for a member with n.

    With prior_count 0 a masked sum becomes each member's mean. With prior_count n0 > 0 a
    member with few examples moves less per inner step than one with many, as the posterior
    mean of a rate with n0 pseudo-examples would; the mean weighs 3 examples like 64.
    """
    mask = mask.to(torch.float32)
    return mask / (mask.sum(dim=-1, keepdim=True) + prior_count).clamp(min=1.0)


def summed_member_loss(params: AdaptedParams, global_block: GlobalBlock, item_part: Tensor,
                       labels: Tensor, weights: Tensor) -> Tensor:
    """Sum over members of each member's mean log-loss on its examples."""
    logits = global_block.logits_from_parts(meta_forward(params), item_part)  # [B, K]
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [B, K]
    return (losses * weights).sum()


_summed_member_loss_grad = grad(summed_member_loss)


def adapt(model: LiMAML, support: SupportBatch, steps: int | None = None,
          first_order: bool | None = None, training_events: bool = False) -> AdaptedParams:
    """Run the inner loop for every member of the batch; return the adapted meta blocks.

    Differentiable with respect to the model's parameters unless `first_order`, in which
    case inner gradients are treated as constants (FOMAML). A member with no support
    examples has zero gradient and keeps the meta-learned initialisation (the prior).
    `training_events`: the support events are the model's own training events (meta-training),
    so each one's label is left out of its item prior.
    """
    steps = model.config.inner_steps if steps is None else steps
    first_order = model.config.first_order if first_order is None else first_order
    params = model.meta_block.initial_params(support.member_features)
    own_labels = support.labels if training_events else None
    item_part = model.global_block.item_part(support.items, support.context, own_labels)  # [B, K, P]
    weights = example_weights(support.mask, model.config.support_prior_count)
    for _ in range(steps):
        grads = _summed_member_loss_grad(params, model.global_block, item_part, support.labels,
                                         weights)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        params = {name: p - model.inner_lr[name] * grads[name] for name, p in params.items()}
    return params


def adapted_embeddings(model: LiMAML, support: SupportBatch, steps: int | None = None) -> Tensor:
    """[B, E] meta embeddings after adaptation, without any outer-loop graph."""
    with torch.no_grad():
        return meta_forward(adapt(model, support, steps=steps, first_order=True))


@dataclass(frozen=True)
class InnerLoop:
    """How an engine runs a chunk: `adapted_embeddings` itself, or compiled (`padded`: chunks
    padded to the shapes it was compiled for)."""

    run: Callable[[LiMAML, SupportBatch], Tensor]
    padded: bool


EAGER = InnerLoop(adapted_embeddings, padded=False)


class AdaptationEngine:
    """Batched online adaptation on CPU or CUDA: support sets in, meta embeddings out.

    This is the call an adaptation worker makes for each micro-batch of requests. Batches
    are cut into chunks of at most `max_members_per_chunk` members to bound memory.

    With `compile`, the inner loop runs through `torch.compile`, which fuses its
    element-wise work (12 times the eager rate on CPU with the default model;
    docs/benchmarks.md). Compiled code is specialised to tensor shapes, so each chunk is
    padded with empty members to a power-of-two size and support sets to
    `support_capacity`: a handful of shapes, each compiled once on first use (`warm_up`
    compiles them all at once; `compile_in_background` compiles them while the engine
    serves with the eager loop).
    The engine takes the model over: it moves it to the device and freezes its weights.
    """

    def __init__(self, model: LiMAML, device: torch.device | str | None = None,
                 max_members_per_chunk: int | None = None, compile: bool = False,
                 support_capacity: int = 64) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        if max_members_per_chunk is None:  # CPU caches favour small chunks, GPUs large ones
            max_members_per_chunk = 512 if self.device.type == "cpu" else 16384
        self.max_members_per_chunk = max_members_per_chunk
        self.support_capacity = support_capacity
        self._loop = self._compiled_loop() if compile else EAGER

    @property
    def meta_dim(self) -> int:
        return self.model.config.meta_dim

    @property
    def compiled(self) -> bool:
        """Whether batches run through the compiled inner loop (now)."""
        return self._loop.padded

    def warm_up(self) -> None:
        """With `compile`, compile the inner loop for every chunk shape now, on empty members:
        a shape's first use compiles for seconds (about 10 s on two CPU cores), and a
        micro-batch that met a new shape waited for it (a 27 s batch at 5,000 events/s).
        Without `compile`, nothing to do."""
        if self._loop.padded:
            self._compile_every_shape(self._loop)

    def compile_in_background(self, then: Callable[[], None] | None = None) -> threading.Thread:
        """Compile the inner loop for every chunk shape in a thread of its own, call `then`, and
        switch to the compiled loop; batches run on the eager loop meanwhile. A worker so serves at
        once rather than after the compilations (21 s of one core here for the CPU's six chunk
        shapes, 2 s from Inductor's on-disk cache). A compilation that fails (no C++ compiler
        for Inductor, say) is logged, and the engine stays eager."""
        loop = self._compiled_loop()

        def compile_then_switch() -> None:
            try:
                self._compile_every_shape(loop)
            except Exception:  # the eager loop serves on; the reason is in the log
                log.warning("torch.compile of the inner loop failed: adapting with the eager loop "
                            "(slower; set [adapt] compile = false to skip the attempt)", exc_info=True)
                return
            if then is not None:
                then()
            self._loop = loop
            log.info("the compiled inner loop serves from now on")

        thread = threading.Thread(target=compile_then_switch, name="limaml-compile", daemon=True)
        thread.start()
        return thread

    def _compiled_loop(self) -> InnerLoop:
        shapes = max(1, self.max_members_per_chunk.bit_length() - 4)
        # room to compile every chunk shape (Dynamo runs eager past its limit)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * shapes)
        return InnerLoop(torch.compile(adapted_embeddings), padded=True)

    def _compile_every_shape(self, loop: InnerLoop) -> None:
        config = self.model.config
        empty = MemberSupport(features=np.zeros(len(config.member_field_cardinalities), dtype=np.int64),
                              items=np.zeros(1, dtype=np.int64), labels=np.zeros(1, dtype=np.float32),
                              context=np.zeros((1, config.context_dim), dtype=np.float32))
        one = SupportBatch.from_members([empty], config.context_dim, self.device)
        rows = _next_power_of_two(1)
        while rows <= self.max_members_per_chunk:
            self._adapt(loop, pad_members(one, rows))
            rows *= 2

    def adapt_batch(self, support: SupportBatch) -> Tensor:
        """[B, E] float32 embeddings on the CPU, in the batch's member order."""
        return self._adapt(self._loop, support)

    def _adapt(self, loop: InnerLoop, support: SupportBatch) -> Tensor:
        support = support.to(self.device)
        if loop.padded:
            support = pad_support(support, max(self.support_capacity, support.items.shape[1]))
        chunks = []
        for start in range(0, len(support), self.max_members_per_chunk):
            chunk = support.rows(start, start + self.max_members_per_chunk)
            rows = len(chunk)
            if loop.padded:
                chunk = pad_members(chunk, min(self.max_members_per_chunk, _next_power_of_two(rows)))
            chunks.append(loop.run(self.model, chunk)[:rows])
        if not chunks:
            return torch.zeros(0, self.meta_dim)
        return torch.cat(chunks).cpu()

    def adapt_members(self, members: Sequence[MemberSupport]) -> np.ndarray:
        """[B, E] float32 embeddings for a list of members' support sets."""
        batch = SupportBatch.from_members(members, self.model.config.context_dim, self.device)
        return self.adapt_batch(batch).numpy()

    def prior(self, member_features: np.ndarray) -> np.ndarray:
        """[B, E] un-adapted prior embeddings for [B, n_fields] meta-feature codes."""
        with torch.no_grad():
            codes = torch.as_tensor(member_features, dtype=torch.int64, device=self.device)
            return self.model.meta_block(codes).cpu().numpy()


def pad_support(batch: SupportBatch, length: int) -> SupportBatch:
    """The batch with support sets padded (masked out) to `length` examples."""
    extra = length - batch.items.shape[1]
    if extra <= 0:
        return batch
    return SupportBatch(
        member_features=batch.member_features,
        items=F.pad(batch.items, (0, extra)),
        labels=F.pad(batch.labels, (0, extra)),
        context=F.pad(batch.context, (0, 0, 0, extra)),
        mask=F.pad(batch.mask, (0, extra)),
    )


def pad_members(batch: SupportBatch, rows: int) -> SupportBatch:
    """The batch with empty members appended up to `rows` members, in new tensors even when
    none is appended: a compiled function's guards tell a slice of a larger batch (a view)
    from a tensor of its own, so a chunk of either kind compiled its own graph."""
    extra = rows - len(batch)
    if extra < 0:
        return batch
    return SupportBatch(*(torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])
                          for t in (batch.member_features, batch.items, batch.labels,
                                    batch.context, batch.mask)))


def _next_power_of_two(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())
