"""The native local stack (`limaml up`, `limaml demo`): broker, workers, scoring service and
a replay as child processes of one command, with a live view and a clean stop.

- `stack.py`: the configuration, bring-up in order, the watch loop, teardown in reverse;
- `supervisor.py`: child processes and the private Kafka broker, started in their own
  sessions and stopped in stages (SIGTERM, then SIGKILL), the pid file, the restart policy;
- `telemetry.py`: figures from the workers' /metrics (counters, rates, histogram
  percentiles), no I/O;
- `live_view.py`: those figures on a terminal, as plain lines, and the final summary;
- `replayer.py`: the replay of the dataset into the interactions topic, in a thread;
- `demo.py`: a model trained when none fits, and one member scored through the service.
"""
