"""The batched adaptation engine against the naive per-member loop (its oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_members, small_model
from limaml.adaptation import AdaptationEngine, MemberSupport, SupportBatch, adapt
from limaml.model import meta_forward
from limaml.reference import naive_adapt

SIZES = [0, 1, 5, 17, 32, 3]


@pytest.mark.parametrize("learned_inner_lr", [True, False])
@pytest.mark.parametrize("fields", [(5, 3), ()])
@pytest.mark.parametrize("hidden", [(), (16, 8)], ids=["no_mlp", "mlp"])
@pytest.mark.parametrize("prior_count", [0.0, 20.0])
def test_batched_adaptation_equals_the_naive_per_member_loop(learned_inner_lr: bool, fields: tuple[int, ...],
                                                             hidden: tuple[int, ...], prior_count: float) -> None:
    model = small_model(learned_inner_lr=learned_inner_lr, member_field_cardinalities=fields,
                        global_hidden=hidden, support_prior_count=prior_count)
    members = random_members(model, SIZES)
    expected = np.stack([naive_adapt(model, member) for member in members])
    batched = AdaptationEngine(model, "cpu").adapt_members(members)
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-5)


def test_each_member_gets_what_it_would_get_alone_in_any_chunking() -> None:
    engine = AdaptationEngine(small_model(), "cpu", max_members_per_chunk=4)
    members = random_members(engine.model, SIZES * 2, seed=3)
    together = engine.adapt_members(members)
    alone = np.concatenate([engine.adapt_members([member]) for member in members])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_an_empty_support_set_gets_the_prior_and_others_move_away_from_it() -> None:
    engine = AdaptationEngine(small_model(), "cpu")
    members = random_members(engine.model, [0, 20])
    adapted = engine.adapt_members(members)
    prior = engine.prior(np.stack([m.features for m in members]))
    np.testing.assert_allclose(adapted[0], prior[0], rtol=1e-5, atol=1e-6)
    assert np.abs(adapted[1] - prior[1]).max() > 1e-3


def test_with_a_prior_count_few_examples_move_the_embedding_less_than_many() -> None:
    """The same examples repeated: with n0 = 0 the mean loss is unchanged, so is the result;
    with n0 > 0 more copies weigh more and move the embedding further from the prior."""
    members = random_members(small_model(), [4], seed=5)
    repeated = [MemberSupport(m.features, np.tile(m.items, 8), np.tile(m.labels, 8), np.tile(m.context, (8, 1)))
                for m in members]
    moved = {}
    for prior_count in (0.0, 20.0):
        engine = AdaptationEngine(small_model(support_prior_count=prior_count), "cpu")
        prior = engine.prior(np.stack([m.features for m in members]))
        moved[prior_count] = [np.linalg.norm(engine.adapt_members(group) - prior) for group in (members, repeated)]
    assert moved[0.0][0] == pytest.approx(moved[0.0][1], rel=1e-4)
    assert moved[20.0][0] < 0.5 * moved[20.0][1]


def test_adaptation_lowers_each_members_support_loss() -> None:
    model = small_model()
    members = random_members(model, [30, 30, 30])
    support = SupportBatch.from_members(members, model.config.context_dim)
    losses = {}
    for steps in (0, model.config.inner_steps):
        with torch.no_grad():
            embedding = AdaptationEngine(model, "cpu").adapt_batch(support) if steps else \
                model.meta_block(support.member_features)
            logits = model.global_block(embedding, support.items, support.context)
            losses[steps] = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, support.labels, reduction="none").mean(dim=1)
    assert (losses[model.config.inner_steps] < losses[0]).all()


def test_the_inner_loop_touches_only_the_meta_block() -> None:
    model = small_model()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    support = SupportBatch.from_members(random_members(model, [10, 4]), model.config.context_dim)
    adapted = adapt(model, support, first_order=True)
    assert set(adapted) == {"input", "w1", "b1", "w2", "b2"}
    assert not torch.allclose(adapted["w1"][0], model.meta_block.hidden.weight)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_second_order_gradients_differ_from_first_order_ones() -> None:
    model = small_model()
    support = SupportBatch.from_members(random_members(model, [12, 9]), model.config.context_dim)
    query = SupportBatch.from_members(random_members(model, [6, 6], seed=1), model.config.context_dim)
    gradients = {}
    for first_order in (True, False):
        model.zero_grad()
        embedding = meta_forward(adapt(model, support, first_order=first_order))
        logits = model.global_block(embedding, query.items, query.context)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, query.labels).backward()
        gradients[first_order] = model.meta_block.hidden.weight.grad.clone()
    assert not torch.allclose(gradients[True], gradients[False])


def test_compiled_engine_pads_shapes_and_matches_eager() -> None:
    model = small_model()
    members = random_members(model, [0, 7, 12])
    eager = AdaptationEngine(small_model(), "cpu").adapt_members(members)
    compiled = AdaptationEngine(model, "cpu", compile=True, support_capacity=16).adapt_members(members)
    assert compiled.shape == (3, 8)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_a_warmed_up_compiled_engine_compiles_nothing_for_any_batch_size() -> None:
    """The warm-up compiles every chunk shape, so no micro-batch waits for a compilation."""
    model = small_model()
    engine = AdaptationEngine(model, "cpu", compile=True, support_capacity=max(SIZES), max_members_per_chunk=64)
    engine.warm_up()
    assert engine.compiled
    compiled = dict(torch._dynamo.utils.counters["stats"])
    members = random_members(model, SIZES * 20)
    for count in (1, 7, 16, 17, 40, 64, 65, 120):
        assert engine.adapt_members(members[:count]).shape == (count, model.config.meta_dim)
    assert dict(torch._dynamo.utils.counters["stats"]) == compiled


def test_an_engine_compiling_in_the_background_serves_eagerly_then_compiled_with_the_same_results() -> None:
    model = small_model()
    members = random_members(model, SIZES * 4)
    expected = AdaptationEngine(small_model(), "cpu").adapt_members(members)
    engine = AdaptationEngine(model, "cpu", support_capacity=max(SIZES), max_members_per_chunk=32)
    compiling = engine.compile_in_background()
    assert not engine.compiled  # serves at once, with the eager loop
    np.testing.assert_allclose(engine.adapt_members(members), expected, rtol=1e-4, atol=1e-5)
    compiling.join(timeout=600)
    assert engine.compiled
    compiled = dict(torch._dynamo.utils.counters["stats"])
    np.testing.assert_allclose(engine.adapt_members(members), expected, rtol=1e-4, atol=1e-5)
    assert dict(torch._dynamo.utils.counters["stats"]) == compiled  # every shape compiled before the switch


def test_an_engine_whose_compilation_fails_stays_eager_and_says_why(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_compiler(function: object) -> object:
        def fails(*args: object) -> object:
            raise RuntimeError("no C++ compiler found")
        return fails

    model = small_model()
    members = random_members(model, SIZES)
    expected = AdaptationEngine(small_model(), "cpu").adapt_members(members)
    monkeypatch.setattr(torch, "compile", no_compiler)
    engine = AdaptationEngine(model, "cpu", support_capacity=max(SIZES), max_members_per_chunk=32)
    engine.compile_in_background().join(timeout=60)
    assert not engine.compiled
    assert "torch.compile of the inner loop failed" in caplog.text and "no C++ compiler found" in caplog.text
    np.testing.assert_allclose(engine.adapt_members(members), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_matches_cpu() -> None:
    members = random_members(small_model(), SIZES)
    on_cpu = AdaptationEngine(small_model(), "cpu").adapt_members(members)
    on_gpu = AdaptationEngine(small_model(), "cuda").adapt_members(members)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)
