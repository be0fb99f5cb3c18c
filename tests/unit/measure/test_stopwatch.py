"""The stopwatch (shrinkflow.measure.stopwatch): warm-up, syncs and what each timing covers."""

from __future__ import annotations

import time

from shrinkflow.measure.stopwatch import time_calls


def test_time_calls_counts_warmup_and_syncs():
    calls, syncs = [], []
    times = time_calls(lambda: calls.append(1), warmup=3, repeats=5, sync=lambda: syncs.append(1))
    assert len(times) == 5 and len(calls) == 8
    assert len(syncs) == 6  # once after warm-up, once per timed call


def test_time_calls_times_the_call_and_its_sync_in_milliseconds():
    # the call sleeps 4 ms and the sync 3 ms: each timing must cover both (sleep never returns
    # early), so a clock started after the call or stopped before the sync would fail this
    times = time_calls(lambda: time.sleep(0.004), warmup=0, repeats=3,
                       sync=lambda: time.sleep(0.003))
    assert all(t >= 7.0 for t in times), times
