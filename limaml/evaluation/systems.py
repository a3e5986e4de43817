"""Score every test event with the state a system would have had when the event arrived.

Adapted systems (LiMAML, MeLU) are evaluated task by task: a task is one (member, prefix)
pair from `protocol.tasks_for`; all tasks are adapted in chunks by the batched inner loop,
and each test event is scored with its own task's result. The global block, the item
embeddings and the supervised baselines stay as they were at the split.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from limaml.adaptation import AdaptationEngine
from limaml.data import InteractionLog
from limaml.episodes import gather_batch
from limaml.evaluation.melu import MeLU, decision_logits
from limaml.evaluation.protocol import Tasks, TestEvents, tasks_for
from limaml.model import LiMAML

TASK_CHUNK = 4096  # tasks gathered and adapted together (the engine sub-chunks further)
EVENT_CHUNK = 2048  # events scored together with per-event copies of MeLU's weights


def limaml_embeddings(engine: AdaptationEngine, log_data: InteractionLog, test: TestEvents,
                      tasks: Tasks, support_size: int, progress: bool = False) -> np.ndarray:
    """[U, E] meta embedding of every task: the meta block adapted on the task's support set."""
    embeddings = np.zeros((len(tasks), engine.meta_dim), dtype=np.float32)
    for start in tqdm(range(0, len(tasks), TASK_CHUNK), desc="adapting LiMAML", unit="chunk",
                      disable=not progress):
        rows = slice(start, start + TASK_CHUNK)
        events, mask = tasks.support_windows(test.histories, support_size, rows)
        support = gather_batch(log_data, tasks.member[rows], events, mask, engine.device)
        embeddings[rows] = engine.adapt_batch(support).numpy()
    return embeddings


def score_limaml(model: LiMAML, log_data: InteractionLog, test: TestEvents, every: int,
                 support_size: int, device: torch.device, progress: bool = False) -> np.ndarray:
    """[T] click probabilities under a refresh policy (`every`: N, NEVER or FROZEN)."""
    engine = AdaptationEngine(model, device)
    tasks = tasks_for(test, every)
    embeddings = limaml_embeddings(engine, log_data, test, tasks, support_size, progress)
    scores = np.empty(len(test), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(test), TASK_CHUNK):
            rows = slice(start, start + TASK_CHUNK)
            index = test.index[rows]
            items = torch.from_numpy(log_data.item[index][:, None]).to(engine.device)  # [n, 1]
            context = torch.from_numpy(log_data.context[index][:, None]).to(engine.device)
            embedding = torch.from_numpy(embeddings[tasks.of_event[rows]]).to(engine.device)
            logits = engine.model.global_block(embedding, items, context)[:, 0]
            scores[rows] = torch.sigmoid(logits).cpu().numpy()
    return scores


def score_melu(model: MeLU, log_data: InteractionLog, test: TestEvents, every: int,
               support_size: int, device: torch.device, progress: bool = False) -> np.ndarray:
    """[T] click probabilities of MeLU fine-tuned on the same support sets as LiMAML."""
    model = model.to(device).eval()
    steps = model.net.config.inner_steps
    tasks = tasks_for(test, every)
    by_task = np.argsort(tasks.of_event, kind="stable")  # test events grouped by task
    task_starts = np.searchsorted(tasks.of_event[by_task], np.arange(len(tasks) + 1))
    scores = np.empty(len(test), dtype=np.float32)
    for start in tqdm(range(0, len(tasks), TASK_CHUNK), desc="adapting MeLU", unit="chunk",
                      disable=not progress):
        rows = slice(start, start + TASK_CHUNK)
        events, mask = tasks.support_windows(test.histories, support_size, rows)
        support = gather_batch(log_data, tasks.member[rows], events, mask, device)
        with torch.no_grad():
            params = model.adapt(support, steps, first_order=True)
            chunk_events = by_task[task_starts[start]:task_starts[min(start + TASK_CHUNK, len(tasks))]]
            for first in range(0, chunk_events.size, EVENT_CHUNK):
                slots = chunk_events[first:first + EVENT_CHUNK]  # positions in the test events
                local = torch.from_numpy(tasks.of_event[slots] - start).to(device)
                index = test.index[slots]
                items = torch.from_numpy(log_data.item[index][:, None]).to(device)  # [n, 1]
                context = torch.from_numpy(log_data.context[index][:, None]).to(device)
                per_event = {name: p[local] for name, p in params.items()}
                logits = decision_logits(per_event, model, model.item_inputs(items, context))[:, 0]
                scores[slots] = torch.sigmoid(logits).cpu().numpy()
    return scores
