"""Planning glue: profiles gathered or measured, the instance built, plan files and CLI outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import ConfigError, UsageError
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import resolve_spec
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.plan_file import load_plan
from paretopipe.sweep.predict import gather_profiles, plan_front
from paretopipe.testbed import load_testbed
from tests.fixtures.testbeds import local_testbed

FACTORY = "tests.fixtures.toy_models:skipnet"
WIFI = Scenario("wifi", LinkCondition(bandwidth_bps=50e6, delay_ms=5.0))
runner = CliRunner()


def _write_testbed(directory: Path, memory: str = "1GiB", remote: bool = False) -> Path:
    devices = ("a", "b", "c")
    hosts = {"b": "192.0.2.10"} if remote else {}
    extra = {d: f'memory = "{memory}"' for d in devices}
    return local_testbed(directory, devices, name="toy", pinned=False, hosts=hosts, extra=extra)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, skipnet_profiles_once):
    """The toy model's profiles on three local devices (measured once per session), as read by the planner."""
    d = tmp_path_factory.mktemp("planning")
    tb = load_testbed(_write_testbed(d))
    shutil.copytree(skipnet_profiles_once, d / "profiles")
    spec = resolve_spec(FACTORY)
    graph = trace_spec(spec, 1)
    profs = gather_profiles(spec, graph, tb, 1, d / "profiles", auto_profile=False)
    return d, tb, spec, graph, profs


@pytest.mark.integration
def test_local_devices_are_profiled_and_reused(profiled, tmp_path):
    _, _, spec, graph, _ = profiled
    tb = load_testbed(_write_testbed(tmp_path))
    profs = gather_profiles(spec, graph, tb, 1, tmp_path / "profiles")
    assert set(profs) == {"a", "b", "c"} and all(p.fresh for p in profs.values())
    again = gather_profiles(spec, graph, tb, 1, tmp_path / "profiles")
    assert not any(p.fresh for p in again.values())


def test_front_is_consistent_and_plans_round_trip(profiled, tmp_path):
    _, tb, spec, graph, profs = profiled
    result = plan_front(spec, graph, tb, WIFI, profs, [1, 2, 3])
    df = result.table()
    assert result.search.method == "exhaustive" and len(df) == result.search.space_size
    assert df["on_front"].any() and df["knee"].sum() == 1
    row = int(np.flatnonzero(df["on_front"])[0])
    plan = result.plan(row)
    from paretopipe.plan.plan_file import save_plan

    path = save_plan(plan, tmp_path / "p.json")
    back = load_plan(path)
    assert back.devices == plan.devices and back.cut_indices == plan.cut_indices
    assert back.predicted["latency_ms"] == pytest.approx(df.at[row, "latency_ms"])
    # every cut in the plan is named as in the traced graph
    assert [c.after for c in back.cuts] == [graph.nodes[c.index].name for c in back.cuts]
    # link conditions recorded along the path driver -> stages -> driver
    assert [(link["src"], link["dst"]) for link in back.links][0][0] == "driver"


def test_more_stages_than_devices(profiled):
    _, tb, spec, graph, profs = profiled
    with pytest.raises(UsageError, match="4 stages need 4 devices"):
        plan_front(spec, graph, tb, WIFI, profs, [2, 4])


def test_impossible_memory_limit_names_field(profiled, tmp_path):
    d, _, spec, graph, _ = profiled
    tb = load_testbed(_write_testbed(tmp_path, memory="1KiB"))
    shutil.copytree(d / "profiles", tmp_path / "profiles")
    profs = gather_profiles(spec, graph, tb, 1, tmp_path / "profiles")
    with pytest.raises(ConfigError, match="memory"):
        plan_front(spec, graph, tb, WIFI, profs, [1, 2])


def test_remote_device_without_profile_prints_the_command(tmp_path):
    tb = load_testbed(_write_testbed(tmp_path, remote=True))
    spec = resolve_spec(FACTORY)
    graph = trace_spec(spec, 1)
    with pytest.raises(ConfigError) as err:
        gather_profiles(spec, graph, tb, 1, tmp_path / "none", devices=["b"])
    assert "paretopipe profile tests.fixtures.toy_models:skipnet --device b" in str(err.value)


def test_profile_of_another_batch_is_refused(profiled):
    d, tb, spec, _, _ = profiled
    graph8 = trace_spec(spec, 8)
    with pytest.raises(ConfigError, match="batch size 8"):
        gather_profiles(spec, graph8, tb, 8, d / "profiles", auto_profile=False)


def test_plan_cli_writes_front_plans_and_plot(profiled, tmp_path):
    d, *_ = profiled
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "plan",
            FACTORY,
            "--testbed",
            str(d / "tb.toml"),
            "--network",
            "4g",
            "--stages",
            "1..2",
            "--profiles",
            str(d / "profiles"),
            "-o",
            str(out),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    front = json.loads(result.stdout)
    df = pd.read_csv(out / "front.csv")
    assert df["on_front"].sum() == len(front) and (out / "front.png").stat().st_size > 10_000
    for row in front:
        assert load_plan(out / f"{row['plan_id']}.json").network == "4g"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--stages", "5"], "5 stages need 5 devices"),
        (["--network", "moon"], "unknown network scenario 'moon'"),
        (["--method", "magic"], "unknown method"),
        (["--stages", "x"], "cannot read stages"),
    ],
)
def test_plan_cli_bad_input(profiled, args, message):
    d, *_ = profiled
    result = runner.invoke(
        app, ["plan", FACTORY, "--testbed", str(d / "tb.toml"), "--profiles", str(d / "profiles"), *args]
    )
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_granularity_can_be_a_list_of_cut_indices(profiled):
    _, tb, spec, graph, profs = profiled
    result = plan_front(spec, graph, tb, WIFI, profs, [2], granularity="3,5")
    assert sorted({p for pos in result.search.plans["cut_positions"] for p in pos}) == [3, 5]
    with pytest.raises(UsageError, match="unknown granularity"):
        plan_front(spec, graph, tb, WIFI, profs, [2], granularity="3,x")


def _runtime(
    device: str, profile_ms: float, one_ms: float, full_ms: float, ips: float, latency_ms: float | None = None
):
    from paretopipe.calibrate.device_runtime import DeviceRuntime

    return DeviceRuntime(
        device, profile_ms, one_ms, full_ms, ips, one_ms if latency_ms is None else latency_ms, 5, 1, 1
    )


def _devices(runtimes):
    from paretopipe.calibrate.device_file import DeviceCalibration
    from paretopipe.calibrate.device_samples import DeviceSample

    samples = {d: [DeviceSample(r, "2026-12-07T10:00:00+0000", "calibrate")] for d, r in runtimes.items()}
    return DeviceCalibration("toy", {"name": FACTORY}, "skipnet", 1, "zmq", "loopback", samples, {}, {})


def test_device_lines_scale_stages_for_latency_and_stretch_them_in_the_bottleneck(profiled):
    _, tb, spec, graph, profs = profiled
    base = plan_front(spec, graph, tb, WIFI, profs, [1, 2])
    # b's worker took 1.5x its profile with one item in flight, 2x that again with the pipeline full
    b_ms = float(base.instance.node_ms[1].sum())
    # and 0.5 ms per item more outside compute (1 item / s at batch 1 is 1000 ms per item)
    runtimes = {"b": _runtime("b", b_ms, 1.5 * b_ms, 3.0 * b_ms, 1000 / (3.0 * b_ms + 0.5))}
    cal = plan_front(spec, graph, tb, WIFI, profs, [1, 2], devices=_devices(runtimes))
    assert np.array_equal(cal.instance.node_ms, base.instance.node_ms)  # the profiles as they are
    assert cal.instance.latency_slope.tolist() == pytest.approx([1.0, 1.5, 1.0])
    assert cal.instance.cycle_slope.tolist() == pytest.approx([1.0, 3.0, 1.0])
    assert cal.instance.cycle_intercept_ms == pytest.approx([0.0, 0.5, 0.0])
    assert cal.instance.latency_intercept_ms == pytest.approx([0.0, 0.0, 0.0])  # no time outside compute
    whole_b = cal.plan_for((), (1,))
    assert whole_b.predicted["stage_ms"][0] == pytest.approx(b_ms)
    copies = whole_b.predicted["stage_copy_ms"][0]  # measured on the CPU's path: near zero, in both lines
    assert 0 <= copies < 0.1
    assert whole_b.predicted["stage_latency_ms"][0] == pytest.approx(1.5 * b_ms + copies)
    assert whole_b.predicted["bottleneck_ms"] >= 3.0 * b_ms + 0.5 - 1e-9
    assert cal.meta["device_runtime"] == "b 1.500/2.000+0.50ms"


def test_latency_takes_the_one_item_overhead_less_the_links_priced_for_its_run(profiled):
    from paretopipe.calibrate.link_file import Calibration, LinkFit

    _, tb, spec, graph, profs = profiled
    # every message costs 0.2 ms plus its bytes at 80 Mbit/s (10 bytes per microsecond)
    calib = Calibration("toy", "zmq", "process", (LinkFit("a", "b", 0.2, 80e6),))
    b_ms = float(plan_front(spec, graph, tb, WIFI, profs, [1]).instance.node_ms[1].sum())
    # one item: 1.2 ms outside compute, end to end; with the window full 0.5 ms per item more than compute
    runtimes = {"b": _runtime("b", b_ms, b_ms, b_ms, 1000 / (b_ms + 0.5), latency_ms=b_ms + 1.2)}
    cal = plan_front(spec, graph, tb, WIFI, profs, [1, 2], calibration=calib, devices=_devices(runtimes))
    links = 0.4 + (graph.input_nbytes() + graph.output_nbytes()) / 10e3  # in and out, unshaped: no 5 ms delay
    assert cal.instance.latency_intercept_ms == pytest.approx([0.0, 1.2 - links, 0.0])
    assert cal.instance.cycle_intercept_ms == pytest.approx([0.0, 0.5, 0.0])
    whole_b = cal.plan_for((), (1,))
    inst = cal.instance
    copies = float(inst.stage_copy_ms(1, 0, inst.n_cuts + 1))  # the profile's (CPU: near zero) copy fit
    assert 0.0 <= copies < 0.1
    assert whole_b.predicted["latency_ms"] == pytest.approx(
        inst.in_transfer_ms[1] + b_ms + 1.2 - links + copies + inst.out_transfer_ms[1]
    )


def test_switching_a_term_off_gives_it_its_default(profiled):
    from paretopipe.sweep.predict import build_instance, link_models

    _, tb, spec, graph, profs = profiled
    b_ms = float(plan_front(spec, graph, tb, WIFI, profs, [1]).instance.node_ms[1].sum())
    runtimes = {"b": _runtime("b", b_ms, 1.5 * b_ms, 3.0 * b_ms, 1000 / (3.0 * b_ms + 0.5), 1.5 * b_ms + 2.0)}
    links = link_models(tb, WIFI, None, list(profs))
    full = build_instance(graph, profs, tb, links, runtimes=runtimes)
    for term, field, default in [
        ("latency_slope", "latency_slope", 1.0),
        ("latency_intercept", "latency_intercept_ms", 0.0),
        ("cycle_slope", "cycle_slope", 1.0),
        ("cycle_intercept", "cycle_intercept_ms", 0.0),
    ]:
        off = build_instance(graph, profs, tb, links, runtimes=runtimes, without=[term])
        assert getattr(full, field)[1] != default and getattr(off, field)[1] == default
        others = {"latency_slope", "latency_intercept_ms", "cycle_slope", "cycle_intercept_ms"} - {field}
        assert all(np.array_equal(getattr(off, f), getattr(full, f)) for f in others)
    with pytest.raises(UsageError, match="unknown cost model term"):
        build_instance(graph, profs, tb, links, runtimes=runtimes, without=["recheck"])


def test_a_plan_repriced_on_another_instance_gets_that_instances_predictions(profiled):
    from paretopipe.sweep.predict import reprice

    _, tb, spec, graph, profs = profiled
    base = plan_front(spec, graph, tb, WIFI, profs, [1, 2])
    b_ms = float(base.instance.node_ms[1].sum())
    slower = plan_front(
        spec,
        graph,
        tb,
        WIFI,
        profs,
        [1, 2],
        devices=_devices({"b": _runtime("b", b_ms, 2.0 * b_ms, 2.0 * b_ms, 1000 / (2.0 * b_ms))}),
    )
    plan = base.plan_for((0,), (0, 1))
    same = reprice(plan, base.instance, {})
    assert same == plan
    again = reprice(plan, slower.instance, {"device_runtime": "b twice as slow"})
    assert again.predicted == slower.plan_for((0,), (0, 1)).predicted
    lat, copies = plan.predicted["stage_latency_ms"], plan.predicted["stage_copy_ms"]
    assert again.predicted["stage_latency_ms"] == pytest.approx([lat[0], 2 * (lat[1] - copies[1]) + copies[1]])
    assert again.id == plan.id and again.cuts == plan.cuts and again.meta["device_runtime"] == "b twice as slow"
    other = plan_front(spec, graph, tb, WIFI, profs, [1, 2], granularity="0,9,10")  # a subset of the cuts
    missing = next(c for c in base.instance.cut_positions if c not in other.instance.cut_positions.tolist())
    with pytest.raises(UsageError, match="the planning instance does not have"):
        reprice(base.plan_for((base.instance.cut_positions.tolist().index(missing),), (0, 1)), other.instance, {})


def test_front_selection_adds_the_plans_predicted_closest_to_the_front(profiled):
    from paretopipe.sweep.candidates import closeness, select

    _, tb, spec, graph, profs = profiled
    result = plan_front(spec, graph, tb, WIFI, profs, [2, 3])
    df = result.table()
    n_front = int(df["on_front"].sum())
    keys = [(tuple(map(int, c)), tuple(map(int, d))) for c, d in zip(df["cut_indices"], df["device_indices"])]
    point = {k: (lat, tput) for k, lat, tput in zip(keys, df["latency_ms"], df["throughput_ips"])}
    front = [k for k, on in zip(keys, df["on_front"]) if on]
    fp = np.array([point[k] for k in front])
    score = {
        k: float(closeness(np.array([point[k]]), fp)[0]) for k, ok in zip(keys, df["feasible"]) if ok and k not in front
    }
    margin = sorted(score.values())[4] - 1 + 1e-9  # five plans within it
    chosen = select(result, "front", limit=n_front + 3, margin=margin)
    assert set(chosen[:n_front]) == set(front) and len(chosen) == n_front + 3
    picked = [score[k] for k in chosen[n_front:]]
    assert picked == sorted(picked) and max(picked) <= min(v for k, v in score.items() if k not in chosen)
    everything = select(result, "front", limit=len(keys), margin=margin)
    assert len(everything) == n_front + 5 and all(score[k] <= 1 + margin for k in everything[n_front:])
    assert select(result, "front", limit=0, margin=margin) == chosen[:n_front]  # never fewer than the front


def test_plans_predicted_near_the_measured_front_are_ranked_against_it(profiled):
    from paretopipe.sweep.candidates import closeness, near_measured_front

    _, tb, spec, graph, profs = profiled
    result = plan_front(spec, graph, tb, WIFI, profs, [2, 3])
    df = result.table()
    keys = [(tuple(map(int, c)), tuple(map(int, d))) for c, d in zip(df["cut_indices"], df["device_indices"])]
    point = {k: (lat, tput) for k, lat, tput in zip(keys, df["latency_ms"], df["throughput_ips"])}
    feasible = {k for k, ok in zip(keys, df["feasible"]) if ok}
    # two plans measured, both 20% slower and 20% less productive than predicted: both on the front
    measured = sorted(feasible)[:2]
    front = {k: (point[k][0] * 1.2, point[k][1] / 1.2) for k in measured}
    fp = np.array(list(front.values()))
    score = {k: float(closeness(np.array([point[k]]), fp)[0]) for k in feasible - set(measured)}
    near = near_measured_front(result, front, set(measured), margin=0.10, limit=len(keys))
    assert near and set(near) == {k for k, v in score.items() if v <= 1.10} and not set(near) & set(measured)
    assert [score[k] for k in near] == sorted(score[k] for k in near)
    assert near_measured_front(result, front, set(measured), margin=0.10, limit=2) == near[:2]
    assert near_measured_front(result, {}, set(measured)) == []


def test_a_profile_taken_on_another_accelerator_is_refused_with_the_command_to_run(profiled):
    import dataclasses

    d, tb, spec, graph, _ = profiled
    on_gpu = tuple(dataclasses.replace(x, accelerator="cuda:0") if x.name == "b" else x for x in tb.devices)
    with pytest.raises(ConfigError) as err:
        gather_profiles(spec, graph, dataclasses.replace(tb, devices=on_gpu), 1, d / "profiles", auto_profile=False)
    text = str(err.value)
    assert "device 'b'" in text and "profiled on accelerator 'cpu' but the device computes on 'cuda:0'" in text
    assert "--device b" in text and "--accelerator cuda:0" in text
