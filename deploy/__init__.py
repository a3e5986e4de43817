"""The native local stack (`limaml up`, `limaml demo`): broker, workers, scoring service and
a replay as child processes of one command, with a live view and a clean stop.

- `stack.py`: the configuration, bring-up in order, the watch loop, teardown in reverse;
- `processes.py`: `limaml` commands as child processes, each in its own session, probed over
  HTTP and stopped by `stop_all` (SIGTERM to each group, SIGKILL after a deadline); the
  private Kafka broker through kafka.sh (also used by the tests and the benchmarks);
- `supervisor.py`: the stack's children and broker, the pid file, the restart policy;
- `kafka.sh`, `redis.sh` (with `common.sh`): a local broker and Redis server, shipped in the
  installed package;
- `telemetry.py`: figures from the workers' /metrics (counters, rates, histogram
  percentiles), no I/O;
- `live_view.py`: those figures on a terminal, as plain lines, and the final summary;
- `replayer.py`: the replay of the dataset into the interactions topic, in a thread;
- `demo.py`: a model trained when none fits, and one member scored through the service.
"""
