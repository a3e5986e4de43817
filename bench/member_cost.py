"""What a stream worker costs as the number of members grows (issue 13, item 5).

For each size, a synthetic log with about 5 events per member (`mean_events=5`, lognormal
activity, at least 1) is replayed unpaced into a fresh prefix on a one-node broker
(deploy/kafka.sh, or LIMAML_KAFKA_BOOTSTRAP with --broker-data-dir), and one stream worker
(`limaml stream`, 4 partitions) applies the whole backlog. No adaptation worker runs, so the
worker is started with a request timeout longer than the run: an unanswered request is not
re-sent (the adaptation side is measured by bench/adapt_throughput.py). Figures per size:

- events/s: from the worker's first to its last applied event (as in bench/freshness.py);
- peak RSS: the worker process and its children, sampled with psutil every 0.2 s;
- RocksDB bytes per member: every file under the worker's data dir (its RocksDB tables,
  all partitions, and Faust's small state files), walked after a graceful stop has closed
  the tables, over the number of members;
- changelog records per member: the records written to the support-sets changelog topic
  (the sum of its partitions' end offsets, which compaction does not move), read after that
  graceful stop (its pre-commit flush has the broker acknowledge every record before the
  commit): a batch writes one changelog record per member it touched, so a member whose
  events came in 5 batches wrote 5 records;
- changelog bytes per member: the segment files (not the preallocated indexes) of that
  topic's partitions in the broker's log dirs, then: what the broker keeps on disk. The
  changelog rolls 16 MiB segments (`stream.topology.CHANGELOG_SEGMENT_BYTES`) and Kafka
  compacts the closed ones as the run goes, so these are bytes after compaction, not the
  bytes written.

The last line is `m<N>_events_per_s=... m<N>_peak_rss_mb=... m<N>_rocksdb_bytes_per_member=...
m<N>_changelog_records_per_member=... m<N>_changelog_bytes_per_member=...` for every size N.

    python bench/member_cost.py --members 10000   # 1 to 3 minutes at a load average of 10 to 30
    python bench/member_cost.py --members 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psutil
from confluent_kafka import Consumer, TopicPartition

from freshness import Stack
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, ChildProcess, local_kafka, poll, unwind_on_sigterm

EVENTS_PER_MEMBER = 5
SAMPLE_INTERVAL_S = 0.2


class PeakRss(threading.Thread):
    """The largest resident set size seen of a process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_INTERVAL_S):
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in processes))
            except psutil.NoSuchProcess:
                return


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def changelog_bytes(broker_data: Path, topic: str) -> int:
    """Bytes of the segment files (`*.log`) in the log dirs (`<topic>-<partition>`) of `topic`
    on every broker node. Not the index files: the broker preallocates 10 MiB for each of an
    active segment's two indexes (80 MiB for 4 partitions, whatever they hold)."""
    return sum(segment.stat().st_size for path in broker_data.glob(f"node-*/data/{topic}-*")
               if path.name.rpartition("-")[2].isdigit() for segment in path.glob("*.log"))


def records_written(bootstrap: str, topic: str, partitions: int) -> int:
    """Records ever written to `topic`: the sum of its partitions' end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"member-cost-{uuid.uuid4().hex}"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
                   for partition in range(partitions))
    finally:
        consumer.close()


def measure(bootstrap: str, broker_data: Path, members: int, work: Path, exits: ExitStack) -> dict[str, float]:
    dataset = f"synthetic:n_members={members},n_items=1000,mean_events={EVENTS_PER_MEMBER},seed=11"
    started = time.monotonic()
    stack = Stack(bootstrap, dataset, work, exits, serving=False)
    events = stack.log.n_events
    print(f"{members:,} members: {events:,} events generated in {time.monotonic() - started:.0f} s; replaying",
          flush=True)
    started = time.monotonic()
    stack.replay()
    print(f"{members:,} members: replayed at {events / (time.monotonic() - started):,.0f} events/s; "
          "stream worker applying the backlog", flush=True)
    stream: ChildProcess = stack.start("stream", "0", "--request-timeout-s", "86400")
    assert stream.process is not None
    rss = PeakRss(stream.process.pid)
    rss.start()
    poll(lambda: stream.metric("limaml_stream_events_total") > 0, 300, "the first applied event")
    first = time.monotonic()
    poll(lambda: stream.metric("limaml_stream_events_total") >= events, 3600, "the backlog applied",
         interval_s=0.1)
    rate = events / (time.monotonic() - first)
    rss.done.set()
    rss.join()
    how = stream.stop()
    rocksdb = tree_bytes(stack.work / "stream")
    topic = f"{stack.kafka.faust_app_id('stream')}-support-sets-changelog"
    changelog, records = changelog_bytes(broker_data, topic), records_written(bootstrap, topic, stack.kafka.partitions)
    result = {"events_per_s": rate, "peak_rss_mb": rss.peak / 2**20,
              "rocksdb_bytes_per_member": rocksdb / members, "changelog_records_per_member": records / members,
              "changelog_bytes_per_member": changelog / members}
    print(f"{members:,} members, {events:,} events: {rate:,.0f} events/s; peak RSS {result['peak_rss_mb']:.0f} MiB; "
          f"RocksDB {rocksdb / 2**20:.1f} MiB ({result['rocksdb_bytes_per_member']:.0f} B/member); "
          f"changelog {records:,} records written ({result['changelog_records_per_member']:.2f}/member), "
          f"{changelog / 2**20:.1f} MiB on disk ({result['changelog_bytes_per_member']:.0f} B/member); "
          f"worker stopped by {how}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="10000,1000000", help="comma-separated member counts")
    parser.add_argument("--broker-data-dir", type=Path,
                        help="the data dir of the deploy/kafka.sh broker at LIMAML_KAFKA_BOOTSTRAP (for the changelog size)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.members.split(",")]
    results: dict[int, dict[str, float]] = {}
    unwind_on_sigterm()
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-bench-")))
        bootstrap = os.environ.get(BOOTSTRAP_VARIABLE)
        broker_data = args.broker_data_dir or work / "kafka"
        if bootstrap is None:
            bootstrap = exits.enter_context(local_kafka(broker_data))
        elif args.broker_data_dir is None:
            parser.error("with LIMAML_KAFKA_BOOTSTRAP set, --broker-data-dir names that broker's data dir")
        print(f"broker {bootstrap}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
        for members in sizes:
            results[members] = measure(bootstrap, broker_data, members, work, exits)
    print(" ".join(f"m{members}_{name}={value:.1f}" for members, figures in results.items()
                   for name, value in figures.items()))


if __name__ == "__main__":
    main()
