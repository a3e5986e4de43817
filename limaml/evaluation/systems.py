"""Score every test event with the state a meta-learned system would have had then.

Adapted systems (LiMAML, MeLU, maml_full_network) are evaluated task by task: a task is one
(member, prefix) pair from `protocol.tasks_for`; all tasks are adapted in chunks by the
batched inner loop, and each test event is scored with its own task's result. Everything
shared by members stays as it was at the split.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from limaml.adaptation import AdaptationEngine
from limaml.data import InteractionLog
from limaml.episodes import gather_batch
from limaml.evaluation.maml_full_network import FullNetworkMAML
from limaml.evaluation.melu import MeLU
from limaml.evaluation.protocol import Refresh, Tasks, TestEvents, tasks_for
from limaml.model import LiMAML

TASK_CHUNK = 4096  # tasks gathered and adapted together (the engine sub-chunks further)
FINE_TUNED_CHUNK = 1024  # tasks fine-tuned together, each with its own copy of the layers
EVENT_CHUNK = 2048  # events scored together with per-event copies of fine-tuned weights


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


def score_limaml(model: LiMAML, log_data: InteractionLog, test: TestEvents, policy: Refresh,
                 support_size: int, device: torch.device, progress: bool = False) -> np.ndarray:
    """[T] click probabilities with the meta embedding refreshed by `policy`."""
    engine = AdaptationEngine(model, device)
    tasks = tasks_for(test, policy)
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


def score_fine_tuned(model: MeLU | FullNetworkMAML, log_data: InteractionLog, test: TestEvents,
                     policy: Refresh, support_size: int, device: torch.device,
                     progress: bool = False) -> np.ndarray:
    """[T] click probabilities of a network fine-tuned per task on the same support sets as LiMAML."""
    model = model.to(device).eval()
    tasks = tasks_for(test, policy)
    by_task = np.argsort(tasks.of_event, kind="stable")  # test events grouped by task
    task_starts = np.searchsorted(tasks.of_event[by_task], np.arange(len(tasks) + 1))
    scores = np.empty(len(test), dtype=np.float32)
    for start in tqdm(range(0, len(tasks), FINE_TUNED_CHUNK), desc=f"fine-tuning {type(model).__name__}",
                      unit="chunk", disable=not progress):
        stop = min(start + FINE_TUNED_CHUNK, len(tasks))
        events, mask = tasks.support_windows(test.histories, support_size, slice(start, stop))
        support = gather_batch(log_data, tasks.member[start:stop], events, mask, device)
        with torch.no_grad():
            params = model.fine_tune(support)
            chunk_events = by_task[task_starts[start]:task_starts[stop]]
            for first in range(0, chunk_events.size, EVENT_CHUNK):
                slots = chunk_events[first:first + EVENT_CHUNK]  # positions in the test events
                local = torch.from_numpy(tasks.of_event[slots] - start).to(device)
                index = test.index[slots]
                items = torch.from_numpy(log_data.item[index][:, None]).to(device)  # [n, 1]
                context = torch.from_numpy(log_data.context[index][:, None]).to(device)
                per_event = {name: p[local] for name, p in params.items()}
                scores[slots] = torch.sigmoid(model.logits(per_event, items, context)[:, 0]).cpu().numpy()
    return scores
