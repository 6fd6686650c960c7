"""Runtime: stage workers and the driver over ZeroMQ on loopback, in threads of this process."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import torch

from paretopipe.errors import TransportError, WorkerError
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import example_inputs, resolve_spec
from paretopipe.model.stages import assemble_output, compare_outputs
from paretopipe.runtime.driver import Driver
from paretopipe.runtime.policy import WorkerPolicy
from paretopipe.runtime.protocol import StageSpec
from paretopipe.runtime.worker import Worker
from paretopipe_backends.base import Endpoint, TransportOptions
from paretopipe_backends.zeromq import ZmqTransport
from tests.fixtures.testbeds import free_ports

pytestmark = pytest.mark.integration  # every test runs workers in threads over real ZeroMQ sockets

SPEC = resolve_spec("tests.fixtures.toy_models:skipnet")
#: What the in-process workers of these tests may build: the test models.
TESTS_POLICY = WorkerPolicy(allow_models=frozenset({"tests.fixtures"}))


@contextlib.contextmanager
def pipeline(devices=("a", "b", "c"), start=None, options=None):
    """Workers for ``start`` (default: all devices) in threads, and a driver transport."""
    names = ["driver", *devices]
    eps = {n: Endpoint(n, "127.0.0.1", p) for n, p in zip(names, free_ports(len(names)))}
    opts = options or TransportOptions(send_timeout_s=1.0)
    transports, threads = [], []
    for name in start if start is not None else devices:
        t = ZmqTransport(eps[name], {k: v for k, v in eps.items() if k != name}, options=opts)
        t.start()
        th = threading.Thread(target=Worker(name, t, poll_s=0.1, policy=TESTS_POLICY).serve, daemon=True)
        th.start()
        transports.append(t)
        threads.append(th)
    dt = ZmqTransport(eps["driver"], {k: v for k, v in eps.items() if k != "driver"}, options=opts)
    dt.start()
    driver = Driver(dt, timeout_s=20, addresses={n: f"{e.host}:{e.port}" for n, e in eps.items()})
    try:
        yield driver
    finally:
        driver.stop(list(start if start is not None else devices))
        for th in threads:
            th.join(timeout=5)
        for t in transports:
            t.close()
        dt.close()


def _specs(graph, cuts, devices, config="cfg1"):
    names = tuple(graph.nodes[c].name for c in cuts)
    hops = [*devices, "driver"]
    return [
        StageSpec(config, k, len(devices), SPEC.to_dict(), graph.batch_size, tuple(cuts), names, hops[k + 1])
        for k in range(len(devices))
    ]


@pytest.fixture(scope="module")
def graph():
    return trace_spec(SPEC, batch_size=2)


def _body_cuts(graph):
    return [c.index for c in graph.cuts if graph.nodes[c.index].name.startswith("body")]


def test_three_stage_pipeline_output_is_exact_and_measured(graph):
    cuts = [_body_cuts(graph)[0], _body_cuts(graph)[-2]]  # the skip tensor crosses both cuts
    x = example_inputs(SPEC, 2)[0]
    with pipeline() as driver:
        ready = driver.setup(["a", "b", "c"], _specs(graph, cuts, ["a", "b", "c"]))
        assert set(ready) == {"a", "b", "c"}
        got = driver.first_result([x])
        exact, diff = compare_outputs(graph.model(x), assemble_output(graph, got))
        assert exact, diff
        lat = driver.latency([x], items=10, warmup=2)
        assert len(lat.latencies_ms) == 10 and all(v > 0 for v in lat.latencies_ms)
        s = lat.summary()
        assert s["latency_ms_p50"] <= s["latency_ms_p95"] <= s["latency_ms_p99"]
        stats = driver.stats()
        assert [st.device for st in stats] == ["a", "b", "c"]
        assert all(len(st.compute_ms) == 13 for st in stats)  # first result + warm-up + items
        tp = driver.throughput([x], items=20, warmup=3, window=4, batch_size=2)
        assert tp.items == 20 and tp.throughput_ips > 0
        driver.release()


def test_min_time_times_more_items_until_it_has_passed(graph):
    cuts = [_body_cuts(graph)[0]]
    x = example_inputs(SPEC, 2)[0]
    with pipeline(devices=("a", "b")) as driver:
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"]))
        t0 = time.perf_counter()
        lat = driver.latency([x], items=5, warmup=2, min_time_s=0.3)
        elapsed = time.perf_counter() - t0
        assert len(lat.latencies_ms) > 5 and sum(lat.latencies_ms) <= 1e3 * elapsed
        assert lat.summary()["latency_items"] == len(lat.latencies_ms)
        tp = driver.throughput([x], items=6, warmup=2, window=3, batch_size=2, min_time_s=0.3)
        assert tp.items > 6 and tp.seconds >= 0.3
        stats = driver.stats()
        # every item sent completed and was computed: warm-ups and timed items of both modes
        assert all(len(st.compute_ms) == 2 + len(lat.latencies_ms) + 2 + tp.items for st in stats)
        # a minimum time already reached by the counts changes nothing
        assert len(driver.latency([x], items=4, warmup=0, min_time_s=1e-9).latencies_ms) == 4
        assert driver.throughput([x], items=4, warmup=1, window=2, batch_size=2, min_time_s=1e-9).items >= 4
        driver.release()


def test_precision_stops_timing_once_the_estimate_is_known_well_enough(graph):
    cuts = [_body_cuts(graph)[0]]
    x = example_inputs(SPEC, 2)[0]
    with pipeline(devices=("a", "b")) as driver:
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"]))
        # +-90%: known as soon as an interval exists (6 items; 6 batches of 2 completions)
        lat = driver.latency([x], items=200, warmup=1, precision=0.9)
        assert 6 <= len(lat.latencies_ms) < 200
        tp = driver.throughput([x], items=300, warmup=1, window=3, batch_size=2, precision=0.9)
        assert 12 <= tp.items < 300
        # a precision never reached: the counts are the most timed
        assert len(driver.latency([x], items=8, warmup=0, precision=1e-9).latencies_ms) == 8
        assert driver.throughput([x], items=14, warmup=1, window=3, batch_size=2, precision=1e-9).items == 14
        driver.release()


def test_worker_error_names_device_and_worker_keeps_serving(graph):
    cuts = [_body_cuts(graph)[0]]
    with pipeline(devices=("a", "b")) as driver:
        bad = _specs(graph, cuts, ["a", "b"])
        bad[1] = StageSpec("cfg1", 1, 2, SPEC.to_dict(), 2, tuple(cuts), ("not_this_node",), "driver")
        with pytest.raises(WorkerError, match="worker 'b'.*differs between driver and worker"):
            driver.setup(["a", "b"], bad)
        # the same workers accept a correct configuration afterwards
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"], config="cfg2"))
        x = example_inputs(SPEC, 2)[0]
        assert compare_outputs(graph.model(x), assemble_output(graph, driver.first_result([x])))[0]


def test_compute_error_is_reported(graph):
    cuts = [_body_cuts(graph)[0]]
    with pipeline(devices=("a", "b")) as driver:
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"]))
        with pytest.raises(WorkerError, match="worker 'a'"):
            driver.first_result([torch.zeros(2, 5, 16, 16)])  # wrong channel count


def test_unreachable_worker_names_device_and_address(graph):
    cuts = [_body_cuts(graph)[0]]
    with pipeline(devices=("a", "b"), start=["a"]) as driver:
        driver.timeout_s = 3
        with pytest.raises(TransportError, match=r"b at 127\.0\.0\.1:\d+"):
            driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"]))


def test_ping_and_stale_results_are_dropped(graph):
    cuts = [_body_cuts(graph)[0]]
    x = example_inputs(SPEC, 2)[0]
    with pipeline(devices=("a", "b")) as driver:
        assert driver.ping("a")["device"] == "a"
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"], config="old"))
        driver._send_item(99, [x])  # its result will belong to an old configuration
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"], config="new"))
        lat = driver.latency([x], items=3, warmup=0)
        assert len(lat.latencies_ms) == 3


def test_stats_carry_cpu_time_and_outlast_the_header_bound(graph):
    # Per-item timings travel as tensors: 3000 items would overflow a 64 KiB JSON header.
    cuts = [_body_cuts(graph)[0]]
    x = example_inputs(SPEC, 2)[0]
    with pipeline(devices=("a", "b")) as driver:
        driver.setup(["a", "b"], _specs(graph, cuts, ["a", "b"]))
        tp = driver.throughput([x], items=3000, warmup=0, window=8, batch_size=2)
        stats = driver.stats()
    assert tp.items == 2999
    for st in stats:
        assert len(st.compute_ms) == len(st.compute_cpu_ms) == len(st.wait_ms) + 1 == 3000
        # CPU time of the computing thread never exceeds the wall time of the same item
        assert all(0 < cpu <= wall + 0.05 for cpu, wall in zip(st.compute_cpu_ms, st.compute_ms))
        assert len(st.send_ms) == 3000
        assert 0 < st.medians()["compute_cpu_ms"] <= st.medians()["compute_ms"] + 0.05
        # the same thread's CPU on each item outside compute: receiving, decoding, encoding, sending
        assert len(st.handling_cpu_ms) == 3000 and all(cpu > 0 for cpu in st.handling_cpu_ms)
    assert tp.cpu_s > 0  # the driver's thread, sending and receiving
