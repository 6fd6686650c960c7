"""Profile schema: round trip, atomic save, field-by-field validation, planner helpers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from paretopipe.errors import ConfigError, UsageError
from paretopipe.host.accelerator import CopyFit
from paretopipe.host.fingerprint import fingerprint
from paretopipe.profile import profile_file as profiles
from paretopipe.profile.profile_file import (
    BatchProfile,
    BlockProfile,
    NodeProfile,
    Profile,
    check_writable,
    default_path,
    find_profile,
    load_profile,
    profile_from_dict,
    save_profile,
)

MODEL = {
    "name": "toy",
    "input_shape": [3, 8, 8],
    "weights": None,
    "weights_sha256": None,
    "seed": 0,
    "source": "torchvision",
    "leaf_modules": [],
}


def _batch(bs: int, times: list[float]) -> BatchProfile:
    nodes = tuple(
        NodeProfile(
            index=i,
            name=f"n{i}",
            op="call_module",
            target=f"m{i}",
            block=f"b{i // 2}",
            median_ms=t,
            iqr_ms=t / 10,
            n=5,
            out_nbytes=100 * bs,
            param_nbytes=40,
            flops=1000 * bs,
            live_nbytes=100 * bs,
            peak_act_nbytes=200 * bs,
        )
        for i, t in enumerate(times)
    )
    blocks = tuple(
        BlockProfile(f"b{k}", 2 * k, min(2 * k + 1, len(times) - 1), 1.0, 0.1, 5, sum(times[2 * k : 2 * k + 2]))
        for k in range((len(times) + 1) // 2)
    )
    total = sum(times)
    return BatchProfile(
        bs,
        {"median": 1.2 * total, "iqr": 0.1, "n": 5, "drift_pct": -0.5, "discarded": 3},
        total,
        1.2,
        4096,
        blocks,
        nodes,
    )


def make_profile(device: str = "pi", label: str = "toy") -> Profile:
    return Profile(
        device=device,
        model={**MODEL, "name": label},
        model_label=label,
        input_shape=(3, 8, 8),
        batch_sizes=(1, 4),
        threads=2,
        cpus=(0,),
        cpu_quota=0.5,
        method={
            "warmup": 2,
            "repeats": 10,
            "min_time_s": 1.0,
            "node_timing": "sequence",
            "timer_overhead_ns": 40,
            "steady_allocator": True,
            "steady_pct": 5.0,
            "max_rounds_factor": 3.0,
        },
        created="2026-01-01T00:00:00+00:00",
        command=("paretopipe", "profile", label),
        fingerprint=fingerprint(2, 0.5),
        batches=(_batch(1, [1.0, 2.0, 3.0]), _batch(4, [3.0, 5.0, 9.0])),
    )


def test_round_trip_and_helpers(tmp_path):
    p = make_profile()
    path = save_profile(p, tmp_path / "sub" / "pi-toy.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "paretopipe.profile" and data["version"] == 6
    assert data["batches"][1]["whole_ms"] == {
        "median": pytest.approx(20.4),
        "iqr": 0.1,
        "n": 5,
        "drift_pct": -0.5,
        "discarded": 3,
    }
    q = load_profile(path)
    assert q == p
    np.testing.assert_array_equal(q.node_ms(4), [3.0, 5.0, 9.0])
    assert q.calibration(1) == 1.2 and q.node_names() == ["n0", "n1", "n2"]
    assert [f for f in os.listdir(path.parent)] == ["pi-toy.json"]


def _with_cpu(p: Profile, cpu_quota: float | None, cpu: list[float]) -> Profile:
    b = p.batches[0]
    nodes = tuple(NodeProfile(**{**n.__dict__, "cpu_ms": c}) for n, c in zip(b.nodes, cpu))
    return Profile(
        **{
            **p.__dict__,
            "cpu_quota": cpu_quota,
            "batches": (BatchProfile(**{**b.__dict__, "nodes": nodes}), *p.batches[1:]),
        }
    )


def test_planned_node_times_share_the_whole_model_by_cpu_time_under_a_quota():
    # wall medians 1, 2, 3 ms and whole 7.2 ms; under the quota the CPU times 3, 1, 2 ms decide the shares
    quota = _with_cpu(make_profile(), 0.5, [3.0, 1.0, 2.0])
    assert quota.shares_by_cpu(1) and not quota.shares_by_cpu(4)  # batch 4 has no CPU times
    np.testing.assert_allclose(quota.planned_node_ms(1), [3.6, 1.2, 2.4])
    np.testing.assert_allclose(quota.planned_node_ms(4), np.array([3.0, 5.0, 9.0]) * 1.2)
    free = _with_cpu(make_profile(), None, [3.0, 1.0, 2.0])  # no quota: wall times times the calibration
    assert not free.shares_by_cpu(1)
    np.testing.assert_allclose(free.planned_node_ms(1), [1.2, 2.4, 3.6])
    for p in (quota, free):
        assert p.planned_node_ms(1).sum() == pytest.approx(p.batch(1).whole_ms["median"])
    assert not _with_cpu(make_profile(), 0.5, [0.0, 0.0, 0.0]).shares_by_cpu(1)


def test_version_1_files_without_cpu_times_are_read(tmp_path):
    data = json.loads(json.dumps(make_profile().to_dict()))
    data["version"] = 1
    for b in data["batches"]:
        for n in b["nodes"]:
            del n["cpu_ms"]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    p = load_profile(tmp_path / "v1.json")
    assert p == make_profile() and p.batches[0].nodes[0].cpu_ms is None
    assert not p.shares_by_cpu(1) and p.planned_node_ms(1) == pytest.approx([1.2, 2.4, 3.6])


def test_version_2_files_without_instruction_set_limits_are_read(tmp_path):
    data = json.loads(json.dumps(make_profile().to_dict()))
    data["version"] = 2
    del data["isa"]
    for key in ("isa", "cpu_capability", "dnnl_max_cpu_isa"):
        del data["fingerprint"][key]
    (tmp_path / "v2.json").write_text(json.dumps(data))
    p = load_profile(tmp_path / "v2.json")
    assert p.isa is None and "cpu_capability" not in p.fingerprint
    data["version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="v3.json: isa: missing"):
        load_profile(tmp_path / "v3.json")


def test_version_3_files_without_drift_are_read_as_drift_none(tmp_path):
    data = json.loads(json.dumps(make_profile().to_dict()))
    for b in data["batches"]:
        del b["whole_ms"]["drift_pct"], b["whole_ms"]["discarded"]
    del data["method"]["steady_pct"], data["method"]["max_rounds_factor"]
    data["version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(data))
    p = load_profile(tmp_path / "v3.json")
    assert [b.whole_ms["drift_pct"] for b in p.batches] == [None, None]
    assert [b.whole_ms["discarded"] for b in p.batches] == [None, None] and p.method["steady_pct"] is None
    assert p.batch(1).whole_ms["median"] == make_profile().batch(1).whole_ms["median"]
    path = save_profile(p, tmp_path / "again.json")  # saved as the current version, drift still unknown
    assert load_profile(path) == p
    data["version"] = 4
    (tmp_path / "v4.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"v4.json: batches\[0\].whole_ms.drift_pct: missing"):
        load_profile(tmp_path / "v4.json")


def test_version_4_files_without_waiting_are_read_as_discarded_none(tmp_path):
    data = json.loads(json.dumps(make_profile().to_dict()))
    for b in data["batches"]:
        del b["whole_ms"]["discarded"]
    del data["method"]["steady_pct"], data["method"]["max_rounds_factor"]
    data["version"] = 4
    (tmp_path / "v4.json").write_text(json.dumps(data))
    p = load_profile(tmp_path / "v4.json")
    assert [b.whole_ms["discarded"] for b in p.batches] == [None, None]
    assert [b.whole_ms["drift_pct"] for b in p.batches] == [-0.5, -0.5]
    assert p.method["steady_pct"] is None and p.method["max_rounds_factor"] is None
    assert load_profile(save_profile(p, tmp_path / "again.json")) == p  # saved as version 5, still unknown
    data["version"] = 5
    (tmp_path / "v5.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"v5.json: method.steady_pct: missing"):
        load_profile(tmp_path / "v5.json")


def test_check_limits_names_the_limit_that_differs():
    p = Profile(**{**make_profile().__dict__, "isa": "sse41"})  # quota 0.5 and isa sse41
    p.check_limits(0.5, "sse41")
    with pytest.raises(
        ConfigError, match=r"cpu_quota: profiled with cpu_quota 0.5 but the device has None.*without --cpu-quota"
    ):
        p.check_limits(None, "sse41")
    with pytest.raises(ConfigError, match=r"isa: profiled with isa 'sse41' but the device has 'avx2'.*with --isa avx2"):
        p.check_limits(0.5, "avx2")
    with pytest.raises(ConfigError, match=r"with --cpu-quota 0.25"):
        p.check_limits(0.25, "sse41")


def _on_gpu() -> Profile:
    copy = {
        "to_device": CopyFit(0.02, 1e-7, (4096, 1 << 20), (0.0204, 0.125)),
        "to_host": CopyFit(0.03, 2e-7, (4096, 1 << 20), (0.031, 0.24)),
    }
    return Profile(**{**make_profile().__dict__, "accelerator": "cuda:0", "copy": copy})


def test_accelerator_and_copy_fits_round_trip(tmp_path):
    p = _on_gpu()
    assert load_profile(save_profile(p, tmp_path / "gpu.json")) == p
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["accelerator"] == "cuda:0" and data["copy"]["to_host"]["ms_per_byte"] == 2e-7


def test_version_5_files_were_taken_on_the_cpu_without_copy_fits(tmp_path):
    data = json.loads(json.dumps(make_profile().to_dict()))
    del data["accelerator"], data["copy"]
    data["version"] = 5
    (tmp_path / "v5.json").write_text(json.dumps(data))
    p = load_profile(tmp_path / "v5.json")
    assert p.accelerator == "cpu" and p.copy is None
    data["version"] = 6
    (tmp_path / "v6.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"v6.json: accelerator: missing"):
        load_profile(tmp_path / "v6.json")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(accelerator="tpu"), r"accelerator: unknown accelerator 'tpu'; one of cpu, mps, cuda"),
        (lambda d: d["copy"]["to_device"].update(ms_per_byte=-1.0), r"copy.to_device: .*must be >= 0"),
        (lambda d: d["copy"]["to_host"].update(median_ms=[1.0]), r"copy.to_host.median_ms: expected 2 numbers"),
        (lambda d: d["copy"].pop("to_host"), r"copy.to_host: missing"),
    ],
)
def test_accelerator_fields_are_validated(tmp_path, edit, message):
    data = json.loads(json.dumps(_on_gpu().to_dict()))
    edit(data)
    with pytest.raises(ConfigError, match=message):
        profile_from_dict(data, "gpu.json")


def test_a_profile_taken_on_another_accelerator_is_refused():
    p = _on_gpu()
    p.check_limits(0.5, None, "cuda:0")
    with pytest.raises(
        ConfigError,
        match=r"accelerator: profiled on accelerator 'cuda:0' but the device computes on 'cpu'; .*--accelerator cpu",
    ):
        p.check_limits(0.5, None, "cpu")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "p.json"
    target.write_text("old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(profiles.os, "replace", boom)
    with pytest.raises(OSError):
        save_profile(make_profile(), target)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["p.json"]


def test_nan_is_refused_before_writing(tmp_path):
    p = make_profile()
    bad = Profile(
        **{**p.__dict__, "batches": (BatchProfile(1, {"median": float("nan"), "iqr": 0, "n": 1}, 1, 1, 1, (), ()),)}
    )
    with pytest.raises(ValueError):
        save_profile(bad, tmp_path / "p.json")
    assert os.listdir(tmp_path) == []


def _bad(mutate, field_text, tmp_path):
    data = make_profile().to_dict()
    data = json.loads(json.dumps(data))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and field_text in str(err.value)
    return err.value


@pytest.mark.parametrize(
    "mutate, field_text",
    [
        (lambda d: d.pop("device"), "device: missing"),
        (lambda d: d.update(threads="2"), "threads: expected integer"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d.update(version=7), "version 7 is not supported"),
        (
            lambda d: d["batches"][0]["whole_ms"].update(drift_pct="1"),
            "batches[0].whole_ms.drift_pct: expected integer/number/null",
        ),
        (lambda d: d["batches"][0]["nodes"][0].pop("cpu_ms"), "batches[0].nodes[0].cpu_ms: missing"),
        (lambda d: d["batches"][0]["nodes"][0].update(cpu_ms="1"), "batches[0].nodes[0].cpu_ms: expected"),
        (lambda d: d["model"].pop("seed"), "model.seed: missing"),
        (lambda d: d["fingerprint"].update(cpu_count=True), "fingerprint.cpu_count"),
        (lambda d: d["fingerprint"].pop("git_commit"), "fingerprint.git_commit: missing"),
        (lambda d: d["batches"][0]["nodes"][1].update(median_ms="fast"), "batches[0].nodes[1].median_ms"),
        (lambda d: d["batches"][1]["nodes"][2].pop("flops"), "batches[1].nodes[2].flops: missing"),
        (lambda d: d["batches"][0]["blocks"][0].update(first=None), "batches[0].blocks[0].first"),
        (lambda d: d["batches"][0]["whole_ms"].update(p99=3), "batches[0].whole_ms.p99: unknown key"),
        (lambda d: d["batches"][0]["nodes"].reverse(), "batches[0].nodes[0].index"),
        (lambda d: d["batches"][1]["nodes"][0].update(name="x"), "batches[1].nodes: node names differ"),
        (lambda d: d.update(batch_sizes=[1, 8]), "batches: batch sizes [1, 4] do not match"),
        (lambda d: d.update(batch_sizes=[0, 4]), "batch_sizes[0]"),
        (lambda d: d.update(command=["paretopipe", 3]), "command[1]"),
        (lambda d: d.update(cpus=["0"]), "cpus[0]"),
    ],
)
def test_every_field_is_validated(mutate, field_text, tmp_path):
    _bad(mutate, field_text, tmp_path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_profile(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_profile(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="expected an object"):
        profile_from_dict([1, 2], "list.json")


class _Spec:
    def __init__(self, **kw):
        self.d = {**MODEL, **kw}

    def to_dict(self):
        return dict(self.d)


def test_check_matches():
    p = make_profile()
    p.check_matches(_Spec(), 4, ["n0", "n1", "n2"])
    p.check_matches(MODEL, 1, ["n0", "n1", "n2"])
    with pytest.raises(ConfigError, match="model.name.*re-run paretopipe profile other"):
        p.check_matches(_Spec(name="other"), 1, ["n0", "n1", "n2"])
    with pytest.raises(ConfigError, match=r"model.input_shape.*--input-shape 3x16x16"):
        p.check_matches(_Spec(input_shape=[3, 16, 16]), 1, ["n0", "n1", "n2"])
    with pytest.raises(ConfigError, match=r"batch size 8 \(profiled: \[1, 4\]\)"):
        p.check_matches(_Spec(), 8, ["n0", "n1", "n2"])
    with pytest.raises(ConfigError, match="node names differ.*first difference at 1"):
        p.check_matches(_Spec(), 1, ["n0", "nX", "n2"])


def test_find_profile(tmp_path):
    save_profile(make_profile("pi", "toy"), default_path("pi", "toy", tmp_path))
    save_profile(make_profile("nano", "toy"), tmp_path / "renamed.json")
    (tmp_path / "junk.json").write_text("[]")
    assert find_profile(tmp_path, "pi", "toy") == tmp_path / "pi-toy.json"
    assert find_profile(tmp_path, "nano", "toy") == tmp_path / "renamed.json"
    with pytest.raises(ConfigError, match="no profile of 'toy' on device 'jetson'"):
        find_profile(tmp_path, "jetson", "toy")


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "p.json") == tmp_path / "new" / "deeper" / "p.json"
    assert not (tmp_path / "new").exists()  # nothing is created
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        check_writable(tmp_path / "file" / "p.json")
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(tmp_path)
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway; a read-only mount is what stops root
            with pytest.raises(UsageError, match="cannot write"):
                check_writable(tmp_path / "p.json")
    finally:
        os.chmod(tmp_path, 0o700)
    with pytest.raises(UsageError, match="cannot write"):
        check_writable("/proc/p.json")
