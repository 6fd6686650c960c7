"""Link calibration: the fit recovers known costs, the file round-trips, the planner uses it,
and the command measures a real testbed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paretopipe.calibrate.link_file import Calibration, LinkFit, calibration_from_dict, load_calibration
from paretopipe.calibrate.link_measure import fit_hops, relay_plan
from paretopipe.cli import app
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.sweep.predict import _link_matrices, link_models
from paretopipe.testbed import load_testbed
from tests.fixtures.testbeds import local_testbed

runner = CliRunner()


def test_fit_recovers_known_hop_costs():
    o_e, s_e, o_m, s_m = 0.1, 1e-6, 0.3, 4e-6  # ms and ms per byte
    raw = []
    for devices in (1, 2):
        for n in (1_000, 100_000, 1_000_000, 4_000_000):
            y = 2 * (o_e + n * s_e) + (devices - 1) * (o_m + n * s_m)
            raw.append({"devices": devices, "nbytes": n, "residual_ms": y})
    (oe, re), (om, rm) = fit_hops(raw)
    assert oe == pytest.approx(o_e, rel=1e-6) and om == pytest.approx(o_m, rel=1e-6)
    assert re == pytest.approx(8 / s_e * 1e3, rel=1e-6) and rm == pytest.approx(8 / s_m * 1e3, rel=1e-6)


def test_single_device_fit_reuses_driver_hops():
    raw = [{"devices": 1, "nbytes": n, "residual_ms": 0.2 + n * 2e-6} for n in (1_000, 1_000_000)]
    edge, mid = fit_hops(raw)
    assert edge == mid


def test_file_round_trip_and_planner_uses_it(tmp_path):
    cal = Calibration("t", "zmq", "loopback", (LinkFit("a", "b", 0.25, 8e9), LinkFit("driver", "a", 0.1, float("inf"))))
    back = calibration_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.links == cal.links
    assert back.link("b", "a").overhead_ms == pytest.approx(0.175)  # unknown link: median of the fits
    tb = load_testbed(local_testbed(tmp_path))
    models = link_models(tb, Scenario("wifi", LinkCondition(bandwidth_bps=50e6, delay_ms=5)), back, ["a", "b"])
    ab = models[("a", "b")]
    assert ab.overhead_ms == 0.25 and ab.condition.delay_ms == 5
    overhead, delay, rate, shaped = _link_matrices(models, ["a", "b"])  # index 2 is the driver
    assert (overhead[0, 1], delay[0, 1], rate[0, 1], shaped[0, 1]) == (0.25, 5, 8e9, 50e6)
    assert rate[2, 0] == float("inf") and shaped[2, 0] == float("inf")  # the driver's links are not emulated here


def test_relay_plan_carries_exactly_the_bytes():
    plan = relay_plan(65_536, ["a", "b", "c"])
    assert plan.stages == 3 and all(c.nbytes == 65_536 for c in plan.cuts)


@pytest.mark.integration
def test_calibrate_command_on_a_local_testbed(tmp_path):
    tb = local_testbed(tmp_path)
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--testbed",
            str(tb),
            "--sizes",
            "1024,1048576",
            "--items",
            "5",
            "-o",
            str(tmp_path / "cal"),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 * 4  # (a, b, a>b, b>a) x 2 sizes
    assert all(r["latency_ms_p50"] > 0 for r in rows)
    cal = load_calibration(tmp_path / "cal" / "local-zmq-loopback.json")
    assert {(link.src, link.dst) for link in cal.links} >= {("driver", "a"), ("a", "b"), ("b", "driver")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["resnet18"], "a model ('resnet18') is only for --devices"),
        (["--devices"], "--devices needs a MODEL"),
        (["--devices", "resnet18", "--backend", "rpc"], "device calibration runs over zmq"),
        (["--fresh"], "--fresh is only for --devices"),
    ],
)
def test_calibrate_bad_input_is_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["calibrate", *args, "--testbed", str(local_testbed(tmp_path)), "-o", str(tmp_path)])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
