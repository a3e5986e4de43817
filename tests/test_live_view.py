"""The figures of `limaml up`'s live view, from real Prometheus expositions, and their text."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from limaml.deploy.live_view import LiveView, StackInfo, frame, line, seconds, summary
from limaml.deploy.telemetry import (
    FRESHNESS,
    Backlog,
    CatchUp,
    History,
    Snapshot,
    add_counters,
    buckets,
    figures,
    parse_metrics,
    quantile,
    subtract,
    total,
)
from limaml.stream.metrics import AdaptMetrics, StreamMetrics


def scrape(metrics: StreamMetrics | AdaptMetrics):
    return parse_metrics(metrics.exposition().decode())


def test_counters_are_summed_over_labels_and_filtered_by_them() -> None:
    stream = StreamMetrics()
    stream.events.inc(7)
    stream.requests.labels("signals").inc(3)
    stream.requests.labels("stale").inc(2)
    parsed = scrape(stream)
    assert total(parsed, "limaml_stream_events_total") == 7
    assert total(parsed, "limaml_stream_adapt_requests_total") == 5
    assert total(parsed, "limaml_stream_adapt_requests_total", reason="stale") == 2
    assert total(parsed, "limaml_stream_dead_letters_total") == 0
    assert total(parsed, "no_such_metric") == 0


def test_quantiles_interpolate_within_buckets_like_histogram_quantile() -> None:
    adapt = AdaptMetrics()  # freshness buckets: ... 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0 ...
    for value in (0.6, 0.7, 0.8, 0.9, 1.5, 1.6, 1.7, 1.8, 3.0, 4.0):
        adapt.freshness.observe(value)
    histogram = buckets(scrape(adapt), FRESHNESS)
    assert histogram[-1] == (math.inf, 10)
    # rank 5 of 10: 4 observations are at most 1.0 and one lies in (1, 1.5]: all of that bucket
    assert quantile(histogram, 0.5) == pytest.approx(1.5)
    # rank 9.9: 9 at most 3.0, one in (3, 4]: 0.9 of the way
    assert quantile(histogram, 0.99) == pytest.approx(3.0 + 1.0 * 0.9)
    assert quantile(histogram, 0.0) == pytest.approx(0.5)  # the first non-empty bucket's lower end
    assert quantile(histogram, 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        quantile(histogram, 1.5)


def test_quantiles_without_observations_or_past_the_last_bound() -> None:
    adapt = AdaptMetrics()
    assert quantile(buckets(scrape(adapt), FRESHNESS), 0.5) is None
    assert quantile((), 0.5) is None
    adapt.freshness.observe(0.1)
    adapt.freshness.observe(500.0)  # past the largest finite bound (60 s)
    histogram = buckets(scrape(adapt), FRESHNESS)
    assert quantile(histogram, 0.99) == math.inf
    assert seconds(quantile(histogram, 0.99)) == ">60 s"
    assert seconds(0.25) == "250 ms" and seconds(2.5) == "2.50 s" and seconds(None) == "-"


def test_a_window_holds_only_the_observations_made_in_it() -> None:
    adapt = AdaptMetrics()
    for _ in range(100):
        adapt.freshness.observe(20.0)  # an old backlog
    before = buckets(scrape(adapt), FRESHNESS)
    for _ in range(10):
        adapt.freshness.observe(0.02)
    after = buckets(scrape(adapt), FRESHNESS)
    recent = subtract(after, before)
    assert recent[-1][1] == 10
    assert quantile(recent, 0.99) <= 0.025
    assert quantile(after, 0.5) > 10  # since the start, the backlog dominates


def snapshot(at: float, stream: StreamMetrics, adapt: AdaptMetrics, produced: int) -> Snapshot:
    return Snapshot(at=at, stream=scrape(stream), adapt=scrape(adapt), produced=produced)


def test_figures_rates_come_from_the_window_and_totals_from_the_latest() -> None:
    stream, adapt = StreamMetrics(), AdaptMetrics()
    history = History(window_s=10)
    history.add(snapshot(100.0, stream, adapt, produced=0))
    stream.events.inc(1000)
    history.add(snapshot(105.0, stream, adapt, produced=1000))
    stream.events.inc(1000)
    stream.dead_letters.inc(3)
    stream.requests.labels("signals").inc(40)
    adapt.embeddings.inc(30)
    adapt.skipped.inc(2)
    adapt.batch_size.observe(20)
    adapt.batch_size.observe(20)
    adapt.freshness.observe(0.3)
    history.add(snapshot(115.0, stream, adapt, produced=2003))
    f = history.figures()
    assert f is not None
    # the window starts at the newest scrape at least 10 s old: t=105
    assert f.window_s == pytest.approx(10.0) and f.elapsed_s == pytest.approx(15.0)
    assert f.applied == 2000 and f.applied_rate == pytest.approx(100.0)
    assert f.produced == 2003 and f.produced_rate == pytest.approx(100.3)
    assert f.dead_letters == 3 and f.superseded == 2
    assert f.requests == 40 and f.requests_by_reason == {"signals": 40}
    assert f.embeddings == 30 and f.embeddings_rate == pytest.approx(3.0)
    assert f.batches == 2 and f.mean_batch == pytest.approx(20.0)
    assert f.freshness.count == 1 and 0.25 < f.freshness.p50 < 0.5


def test_a_scrape_that_moves_backwards_gives_no_negative_rate() -> None:
    stream, adapt = StreamMetrics(), AdaptMetrics()
    stream.events.inc(50)
    earlier = snapshot(0.0, stream, adapt, produced=50)
    later = snapshot(1.0, StreamMetrics(), adapt, produced=50)  # a restarted worker counts from 0
    assert figures(later, earlier, earlier).applied_rate == 0.0


def test_a_restarted_workers_earlier_counts_carry_its_totals_and_rates_on() -> None:
    stream, adapt = StreamMetrics(), AdaptMetrics()
    history = History(window_s=10)
    stream.events.inc(100)
    stream.requests.labels("signals").inc(7)
    stream.ingest_lag.observe(0.01)
    before_crash = scrape(stream)
    history.add(Snapshot(at=0.0, stream=before_crash, adapt=scrape(adapt)))
    restarted = StreamMetrics()  # the new process counts from zero
    restarted.events.inc(30)
    restarted.requests.labels("stale").inc(2)
    carried = add_counters(before_crash, scrape(restarted))
    assert total(carried, "limaml_stream_events_total") == 130
    assert total(carried, "limaml_stream_adapt_requests_total", reason="signals") == 7
    assert total(carried, "limaml_stream_adapt_requests_total", reason="stale") == 2
    assert buckets(carried, "limaml_stream_ingest_lag_seconds")[-1][1] == 1  # histograms too
    history.add(Snapshot(at=10.0, stream=carried, adapt=scrape(adapt)))
    f = history.figures()
    assert f is not None and f.applied == 130 and f.applied_rate == pytest.approx(3.0)


def test_add_counters_keeps_the_latest_gauges_only() -> None:
    base = parse_metrics("# TYPE up gauge\nup 1\n# TYPE n counter\nn_total 5\n")
    latest = parse_metrics("# TYPE up gauge\nup 0\n# TYPE n counter\nn_total 2\n")
    merged = add_counters(base, latest)
    assert total(merged, "up") == 0 and total(merged, "n_total") == 7


def test_catch_up_needs_every_offset_committed_and_a_quiet_period() -> None:
    catch_up = CatchUp(quiet_s=3.0)

    def at(t: float, events: int, requests: int, written: int = 5,
           produced: int = 100) -> Snapshot:
        return Snapshot(at=t, produced=produced, backlog=Backlog(events, requests, written))

    assert not catch_up.update(Snapshot(at=0.0, produced=100))  # the brokers did not answer
    assert not catch_up.update(at(0.0, events=10, requests=0))  # 10 events not committed
    assert not catch_up.update(at(3.5, events=10, requests=0))  # quiet, but not committed
    assert not catch_up.update(at(4.0, events=0, requests=5))  # 5 requests not committed
    assert not catch_up.update(at(7.5, events=0, requests=5))  # quiet, but still not committed
    assert not catch_up.update(at(8.0, events=0, requests=0))  # not quiet for 3 s yet
    assert not catch_up.update(at(10.0, events=0, requests=0))
    assert catch_up.update(at(11.0, events=0, requests=0))
    assert not catch_up.update(at(12.0, events=0, requests=0, written=6))  # a staleness request: wait again
    assert not catch_up.update(at(14.0, events=0, requests=0, written=6))
    assert catch_up.update(at(15.0, events=0, requests=0, written=6))


def sample_figures():
    stream, adapt = StreamMetrics(), AdaptMetrics()
    first = snapshot(0.0, stream, adapt, produced=0)
    stream.events.inc(1234)
    stream.requests.labels("stale").inc(12)
    adapt.embeddings.inc(10)
    adapt.batch_size.observe(12)
    adapt.freshness.observe(1.5)
    return figures(snapshot(62.0, stream, adapt, produced=1234), first, first)


def info() -> StackInfo:
    return StackInfo(command="up", model_version="v1", topic_prefix="limaml", replay_total=2000,
                     replay_state="running", processes={"stream": ":6066", "adapt": ":6067"},
                     restarts={"stream": 2},
                     score_url="http://127.0.0.1:8000/v1/score", log_dir=Path("/tmp/up/logs"))


def test_the_frame_and_the_plain_line_show_the_figures() -> None:
    f = sample_figures()
    text = "\n".join(frame(f, info()))
    assert "1:02" in text and "1,234 / 2,000 events (62 %)" in text
    assert "stale 12" in text and "stream :6066" in text and "/v1/score" in text
    assert "p50 1.25 s" in text  # one observation of 1.5 in (1, 1.5]: the middle of the bucket
    assert line(f).startswith("[1:02] produced 1,234 | applied 1,234")


def test_the_summary_names_totals_stops_and_logs() -> None:
    lines = summary(sample_figures(), info(), "stopped by Ctrl-C",
                    {"delivered": 1234, "seconds": 2.5, "events_per_s": 493.6, "failed": 0, "interrupted": True},
                    [("replay", "SIGINT, 0.1 s"), ("broker", "SIGTERM, 2.0 s")])
    text = "\n".join(lines)
    assert lines[0] == "limaml up: stopped by Ctrl-C, after 1:02"
    assert "1,234 events delivered in 2.5 s" in text and "interrupted" in text
    assert "1,234 events applied" in text and "10 embeddings in 1 batch of 12.0" in text
    assert "replay (SIGINT, 0.1 s), broker (SIGTERM, 2.0 s)" in text
    assert "restarted  stream 2 times after a crash" in text
    assert "/tmp/up/logs/" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_view_redraws_its_block_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    out = Terminal()
    view = LiveView(out, "auto")
    assert view.mode == "tty"
    f = sample_figures()
    view.show(f, info())
    drawn = len(frame(f, info()))
    assert "\x1b[" not in out.getvalue()  # nothing to erase the first time
    view.show(f, info())
    assert out.getvalue().count(f"\x1b[{drawn}F\x1b[J") == 1  # back up over the block, clear
    view.note("a log line")
    after_note = out.getvalue().split("a log line\n", 1)[1]
    assert after_note.startswith("limaml up")  # the block is drawn again below the note
    view.end(["done"])
    assert out.getvalue().endswith("done\n")


def test_a_plain_view_writes_one_line_every_few_updates() -> None:
    out = io.StringIO()  # not a terminal
    view = LiveView(out, "auto", plain_every=3)
    assert view.mode == "plain"
    for _ in range(7):
        view.show(sample_figures(), info())
    assert out.getvalue().count("\n") == 3  # updates 1, 4 and 7
    assert "\x1b[" not in out.getvalue()
    with pytest.raises(ValueError):
        LiveView(out, "fancy")
