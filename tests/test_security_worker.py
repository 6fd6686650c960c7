"""A worker runs only what its own owner allowed, whoever reaches its port.

The peer here is a raw pyzmq socket speaking the documented frame format (a JSON envelope, then
one frame of raw bytes per tensor), with no key and no --secure: what anyone on the worker's
network could send. Each request below is refused with its reason, nothing it names is imported
or opened, and the same worker process then serves a legitimate plan bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import zmq
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import Refused, UsageError
from paretopipe.model.registry import build_model, example_inputs, resolve_spec
from paretopipe.runtime.endpoints import driver_exposure, worker_exposure
from paretopipe.runtime.policy import WorkerPolicy, allowances, contained_file
from paretopipe.runtime.protocol import StageSpec
from paretopipe.testbed import load_testbed
from paretopipe_backends.codec import MAX_JSON_DEPTH
from tests.fixtures.testbeds import free_ports

ROOT = Path(__file__).resolve().parents[1]
SKIPNET = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
SIDE_EFFECT_MODULE = "pp_side_effect_model"
runner = CliRunner()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RawPeer:
    """An unauthenticated peer: a PUSH socket to the worker, a PULL socket bound where the
    testbed puts the driver, and nothing of paretopipe's transport."""

    def __init__(self, worker_port: int, driver_port: int) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.connect(f"tcp://127.0.0.1:{worker_port}")
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.pull.bind(f"tcp://127.0.0.1:{driver_port}")

    def send(self, header: dict[str, Any], tensors: tuple[torch.Tensor, ...] = ()) -> None:
        descriptors = [{"dtype": "float32", "shape": list(t.shape), "nbytes": t.nbytes} for t in tensors]
        envelope = {"v": 1, "src": "driver", "header": header, "tensors": descriptors}
        # "1e999" is valid JSON that Python reads as infinity; json.dumps would write "Infinity"
        text = json.dumps(envelope).replace('"1e999"', "1e999")
        self.send_frames([text.encode(), *(t.contiguous().numpy().tobytes() for t in tensors)])

    def send_frames(self, frames: list[bytes]) -> None:
        self.push.send_multipart(frames)

    def recv(self, timeout_s: float = 30.0) -> tuple[dict[str, Any], list[bytes]]:
        if not self.pull.poll(int(timeout_s * 1000)):
            raise AssertionError(f"no reply within {timeout_s} s")
        frames = self.pull.recv_multipart()
        envelope = json.loads(frames[0])
        return envelope["header"], frames[1:]

    def ping(self, nonce: str) -> dict[str, Any]:
        self.send({"kind": "ping", "nonce": nonce})
        header, _ = self.recv()
        assert header == {**header, "kind": "pong", "nonce": nonce}, header
        return header

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One worker process allowed the test models, a weights directory and an artifacts
    directory, with a module on its path that leaves a marker file when imported."""
    tmp = tmp_path_factory.mktemp("served")
    weights_dir, artifacts_dir, outside = tmp / "weights", tmp / "artifacts", tmp / "outside"
    for d in (weights_dir, artifacts_dir, outside):
        d.mkdir()
    # Files outside the allowed directories are FIFOs: opening one to read would block the worker
    # until a writer comes, so a worker that read one could never answer the next ping.
    fifo = outside / "secret.pt"
    os.mkfifo(fifo)
    (weights_dir / "link-out.pt").symlink_to(fifo)
    (weights_dir / "link-passwd.pt").symlink_to("/etc/passwd")
    torch.save(build_model(resolve_spec(SKIPNET["name"], seed=7)).state_dict(), weights_dir / "skipnet.pt")
    (artifacts_dir / "stage0.pt2").write_bytes(b"not the exported stage the plan names")
    modules = tmp / "modules"
    modules.mkdir()
    marker = tmp / "imported.marker"
    (modules / f"{SIDE_EFFECT_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n\ndef make():\n    return None\n"
    )
    p0, p1 = free_ports(2)
    tb = tmp / "tb.toml"
    tb.write_text(
        f'name = "attacked"\n[driver]\nhost = "127.0.0.1"\nport = {p0}\n'
        f'[[devices]]\nname = "a"\nhost = "127.0.0.1"\nport = {p1}\nthreads = 1\n'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(modules), str(ROOT)]), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "paretopipe", "worker", "--testbed", str(tb), "--device", "a"]
    argv += ["--allow-model", "tests.fixtures", "--weights-dir", str(weights_dir), "--artifacts", str(artifacts_dir)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peer = RawPeer(p1, p0)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            peer.send({"kind": "ping", "nonce": "up"})
            if peer.pull.poll(500):
                break
            assert time.monotonic() < deadline, "the worker did not answer"
        while peer.pull.poll(200):  # pongs of the repeated pings
            peer.pull.recv_multipart()
        yield {
            "peer": peer,
            "proc": proc,
            "weights_dir": weights_dir,
            "fifo": fifo,
            "marker": marker,
            "modules": modules,
        }
    finally:
        peer.close()
        proc.terminate()
        proc.wait(timeout=10)


def _setup(model: dict[str, Any] = SKIPNET, **fields: Any) -> dict[str, Any]:
    spec = {
        "config": "attack",
        "stage": 0,
        "stages": 1,
        "model": model,
        "batch_size": 1,
        "cuts": [],
        "cut_names": [],
        "next_peer": "driver",
        **fields,
    }
    return {"kind": "setup", "spec": spec}


def _refused(served, header: dict[str, Any], reason: str, text: str) -> None:
    """Send ``header``; the worker answers with an error of ``reason`` and is the same process."""
    peer = served["peer"]
    peer.send(header)
    reply, _ = peer.recv()
    assert reply["kind"] == "error" and reply["device"] == "a", reply
    assert reply["reason"] == reason, reply
    assert f"refused ({reason})" in reply["error"] and text in reply["error"], reply["error"]
    assert peer.ping("after")["pid"] == served["proc"].pid
    assert not psutil.Process(served["proc"].pid).children(), "the worker forked"


BAD_SHA = "0" * 64


@pytest.mark.parametrize(
    "name, reason, text",
    [
        ("os:abort", "model-not-allowed", "module 'os' is not allowed"),
        ("os:fork", "model-not-allowed", "module 'os' is not allowed"),
        (f"{SIDE_EFFECT_MODULE}:make", "model-not-allowed", f"module '{SIDE_EFFECT_MODULE}' is not allowed"),
        ("tests.fixturesx.evil:make", "model-not-allowed", "module 'tests.fixturesx.evil' is not allowed"),
        ("os.path:join ; import os", "model-not-allowed", "cannot read model"),
    ],
)
@pytest.mark.integration  # a real worker process
def test_factories_of_modules_not_allowed_are_refused_unimported(served, name, reason, text):
    _refused(served, _setup({**SKIPNET, "name": name}), reason, text)
    assert not served["marker"].exists(), "the module was imported"


def _weights(path: str, sha: str | None = BAD_SHA) -> dict[str, Any]:
    return {**SKIPNET, "weights": path, "weights_sha256": sha}


@pytest.mark.integration  # a real worker process
def test_weights_outside_the_allowed_directory_are_refused_unread(served):
    wdir, fifo = served["weights_dir"], served["fifo"]
    cases = [
        ("../../etc/passwd", "climbs out of its directory"),
        (str(wdir / ".." / "outside" / "secret.pt"), "climbs out of its directory"),
        ("/etc/passwd", "resolves to '/etc/passwd', outside"),
        (str(fifo), f"resolves to '{fifo}', outside"),
        ("link-out.pt", f"resolves to '{fifo}', outside"),  # a symlink inside pointing out
        (str(wdir / "link-passwd.pt"), "resolves to '/etc/passwd', outside"),
    ]
    for path, text in cases:
        _refused(served, _setup(_weights(path)), "path-outside", text)
    _refused(served, _setup(_weights("nope.pt")), "not-found", "are not in")
    _refused(served, _setup(_weights("skipnet.pt", None)), "hash-missing", "without a SHA-256")
    _refused(served, _setup(_weights("skipnet.pt", BAD_SHA)), "hash-mismatch", "differs from the one the plan")


@pytest.mark.integration  # a real worker process
def test_an_artifact_with_another_hash_or_outside_is_refused(served):
    _refused(
        served,
        _setup(artifact={"file": "stage0.pt2", "sha256": BAD_SHA}),
        "hash-mismatch",
        "stage file",
    )
    _refused(
        served,
        _setup(artifact={"file": "../outside/secret.pt", "sha256": BAD_SHA}),
        "path-outside",
        "climbs out",
    )
    _refused(served, _setup(artifact={"file": str(served["fifo"]), "sha256": BAD_SHA}), "path-outside", "outside")


@pytest.mark.parametrize(
    "fields, text",
    [
        ({"threads": 10**9}, "threads 1000000000 is outside [1, 1024]"),
        ({"threads": (os.cpu_count() or 1) + 1}, f"exceeds the {os.cpu_count()} cores of this device"),
        ({"batch_size": 10**6}, "batch_size 1000000 is outside"),
        ({"stages": 10**6}, "stages 1000000 is outside [1, 64]"),
        ({"stages": 3, "stage": 2, "cuts": [5, 3], "cut_names": ["x", "y"]}, "cuts [5, 3] are not increasing"),
        ({"config": "c" * 100}, "config is 100 characters long, at most 64"),
        ({"next_peer": "x" * 5000}, "next_peer is 5000 characters long"),
        ({"next_peer": "elsewhere"}, "peers ['elsewhere'] that this worker does not know"),
        ({"shaping": {"driver": {"delay_ms": -1.0}}}, "delay_ms is -1.0, expected a finite number >= 0"),
        ({"shaping": {"driver": {"delay_ms": "1e999"}}}, "delay_ms is inf, not a finite number"),
        ({"shaping": {"driver": {"delay_ms": 1e12}}}, "at most 600000"),
        ({"model": {**SKIPNET, "input_shape": [3, 4096, 4096, 64]}}, "elements, at most"),
        ({"model": {**SKIPNET, "name": "n" * 5000}}, "model.name is 5000 characters long"),
        ({"cut_names": [], "cuts": [], "seed": 1}, "unknown field(s) ['seed']"),
    ],
)
@pytest.mark.integration  # a real worker process
def test_every_field_is_bounded(served, fields, text):
    header = _setup(**fields)
    reason = "malformed" if "unknown field" in text else "out-of-bounds"
    peer = served["peer"]
    peer.send(header)
    reply, _ = peer.recv()
    assert reply["kind"] == "error" and reply["reason"] == reason, reply
    assert text in reply["error"], reply["error"]
    assert peer.ping("after")["pid"] == served["proc"].pid


@pytest.mark.integration  # a real worker process
def test_control_messages_are_bounded_too(served):
    peer = served["peer"]
    for header, text in [
        ({"kind": "ping", "nonce": "n" * 65}, "nonce is 65 characters long"),
        ({"kind": "stats", "reset": "yes"}, "expected true or false"),
        ({"kind": "stop", "now": True}, "stop message has unknown field(s) ['now']"),
        ({"kind": "item", "config": "attack", "item": 2**70}, "is not a 64-bit integer"),
        ({"kind": "ready"}, "a worker does not accept 'ready' messages"),
    ]:
        peer.send(header)
        reply, _ = peer.recv()
        assert reply["kind"] == "error" and text in reply["error"], reply
    assert peer.ping("alive")["pid"] == served["proc"].pid  # the stop above was refused


@pytest.mark.integration  # a real worker process
@pytest.mark.parametrize("opener", [b"[", b"{"])
def test_deeply_nested_headers_are_dropped_before_parsing(served, opener):
    peer = served["peer"]
    peer.send_frames([opener * (64 * 1024)])
    envelope = b'{"v": 1, "src": "driver", "header": {"kind": "ping", "nonce": "deep", "x": ' + b"[" * 80
    peer.send_frames([envelope + b"]" * 80 + b"}, " + b'"tensors": []}'])
    peer.send({"kind": "stats"})
    reply, _ = peer.recv()
    assert reply["kind"] == "stats", reply  # no pong: both deep headers were dropped, unanswered
    reasons = reply["transport"]["last_reject_reasons"][-2:]
    assert all(f"nested too deeply: arrays/objects deeper than {MAX_JSON_DEPTH} levels" in r for r in reasons), reasons
    assert peer.ping("after")["pid"] == served["proc"].pid


@pytest.mark.integration  # a real worker process
def test_after_all_that_the_worker_serves_a_legitimate_plan_bit_exactly(served):
    # Runs after the refusals above (same module-scoped worker process).
    peer, wdir = served["peer"], served["weights_dir"]
    weights = wdir / "skipnet.pt"
    model = {**SKIPNET, "seed": 7, "weights": "skipnet.pt", "weights_sha256": _sha256(weights)}
    peer.send(_setup(model, config="legit", batch_size=2, threads=1))
    ready, _ = peer.recv(timeout_s=60)
    assert ready["kind"] == "ready" and ready["config"] == "legit", ready
    spec = resolve_spec(SKIPNET["name"], weights=weights, seed=7)
    x = example_inputs(spec, 2)[0]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            expected = build_model(spec)(x)
    finally:
        torch.set_num_threads(before)
    for item in range(3):
        peer.send({"kind": "item", "config": "legit", "item": item}, (x,))
        result, frames = peer.recv()
        assert {k: result[k] for k in ("kind", "config", "item")} == {"kind": "result", "config": "legit", "item": item}
        assert set(result) <= {"kind", "config", "item", "values"}, result
        got = torch.from_numpy(np.frombuffer(frames[0], dtype=np.float32).copy()).view(expected.shape)
        assert torch.equal(got, expected)
    assert not served["marker"].exists()
    # The control: the side-effect module does leave its marker when something imports it.
    env = dict(os.environ, PYTHONPATH=str(served["modules"]))
    subprocess.run([sys.executable, "-c", f"import {SIDE_EFFECT_MODULE}"], env=env, check=True)
    assert served["marker"].exists()


# ---- the policy and the exposure rules on their own -----------------------------------------------


def test_contained_file_follows_symlinks_and_refuses_escapes(tmp_path: Path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "w.pt").write_bytes(b"w")
    (outside / "x.pt").write_bytes(b"x")
    (allowed / "in-link.pt").symlink_to(allowed / "sub" / "w.pt")
    (allowed / "out-dir").symlink_to(outside, target_is_directory=True)
    dirs = (allowed.resolve(),)
    real = (allowed / "sub" / "w.pt").resolve()
    assert contained_file("sub/w.pt", dirs, "weights", "--weights-dir") == real
    assert contained_file(str(real), dirs, "weights", "--weights-dir") == real
    assert contained_file("in-link.pt", dirs, "weights", "--weights-dir") == real
    assert contained_file("missing.pt", dirs, "weights", "--weights-dir") is None
    for name in ["out-dir/x.pt", "sub/../../outside/x.pt", str(outside / "x.pt"), "/etc/passwd"]:
        with pytest.raises(Refused) as err:
            contained_file(name, dirs, "weights", "--weights-dir")
        assert err.value.reason == "path-outside", name
    with pytest.raises(Refused, match="given no directory to read them from"):
        contained_file("w.pt", (), "weights", "--weights-dir")


def test_setup_names_the_accelerator_and_the_worker_refuses_another():
    spec = StageSpec("c", 0, 1, SKIPNET, 1, (), (), "driver", accelerator="cuda:0")
    assert StageSpec.from_header(spec.to_header()).accelerator == "cuda:0"
    old = spec.to_header()
    del old["spec"]["accelerator"]
    assert StageSpec.from_header(old).accelerator == "cpu"  # a driver that does not name one
    bad = spec.to_header()
    bad["spec"]["accelerator"] = "../../gpu"
    with pytest.raises(Refused, match=r"out-of-bounds.*unknown accelerator '../../gpu'"):
        StageSpec.from_header(bad)
    policy = WorkerPolicy(allow_models=frozenset({"tests.fixtures"}))
    with pytest.raises(Refused) as err:
        policy.admit(spec)
    assert err.value.reason == "accelerator-mismatch" and "asks for accelerator 'cuda:0'" in str(err.value)
    assert "this worker computes on 'cpu'" in str(err.value)
    gpu_policy = WorkerPolicy(allow_models=frozenset({"tests.fixtures"}), accelerator="cuda:0")
    assert gpu_policy.admit(spec).accelerator == "cuda:0"


def test_a_worker_for_an_accelerator_its_host_lacks_refuses_to_start(tmp_path: Path):
    port, driver_port = free_ports(2)
    tb = tmp_path / "tb.toml"
    tb.write_text(
        f'[driver]\nport = {driver_port}\n[[devices]]\nname = "g"\nhost = "127.0.0.1"\nport = {port}\n'
        'accelerator = "cuda:63"\n'
    )
    result = CliRunner().invoke(app, ["worker", "--testbed", str(tb), "--device", "g"])
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "accelerator 'cuda:63' is not available on" in result.stderr and "reports: cpu" in result.stderr


def test_policy_from_options_and_allowances(tmp_path: Path):
    with pytest.raises(UsageError, match="is not a module name"):
        WorkerPolicy.from_options(["mypkg.models:make"])
    with pytest.raises(UsageError, match="--weights-dir .* is not a directory"):
        WorkerPolicy.from_options(weights_dirs=[tmp_path / "nope"])
    policy = WorkerPolicy.from_options(["tests.fixtures"], [tmp_path])
    assert policy.allow_models == {"tests.fixtures"} and policy.weights_dirs == (tmp_path.resolve(),)
    spec = StageSpec("c", 0, 1, {**SKIPNET, "name": "tests.fixtures.toy_models:skipnet"}, 1, (), (), "driver")
    assert policy.admit(spec).model == spec.model
    relay = {"name": "paretopipe.calibrate.link_measure:relay", "input_shape": [4], "source": "factory"}
    assert WorkerPolicy().admit(StageSpec("c", 0, 1, relay, 1, (), (), "driver")).model == relay  # built in
    with pytest.raises(Refused, match="model-not-allowed"):
        WorkerPolicy().admit(spec)
    assert allowances(SKIPNET) == (["tests.fixtures.toy_models"], [])
    assert allowances({"name": "resnet18", "input_shape": [3, 224, 224]}) == ([], [])
    assert allowances(relay) == ([], [])
    weighted = {**SKIPNET, "weights": str(tmp_path / "w.pt")}
    assert allowances(weighted)[1] == [str(tmp_path.resolve())]


def _testbed(tmp_path: Path, host: str) -> Path:
    p0, p1 = free_ports(2)
    path = tmp_path / "tb.toml"
    path.write_text(
        f'name = "net"\n[driver]\nhost = "127.0.0.1"\nport = {p0}\n'
        f'[[devices]]\nname = "pi"\nhost = "{host}"\nport = {p1}\n'
    )
    return path


def test_a_worker_beyond_loopback_needs_secure_or_insecure(tmp_path: Path):
    path = _testbed(tmp_path, "192.0.2.10")
    dev = load_testbed(path).device("pi")
    for backend in ("zmq", "rpc"):
        result = runner.invoke(app, ["worker", "--testbed", str(path), "--device", "pi", "--backend", backend])
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "would listen on 192.0.2.10" in lines[0] and "beyond loopback without --secure" in lines[0]
    line = worker_exposure(dev, "zmq", bind_all=False, secure=False, insecure=True)
    assert line.startswith("insecure: worker pi on 192.0.2.10") and "\n" not in line
    assert "run code" in worker_exposure(dev, "rpc", bind_all=False, secure=False, insecure=True)
    assert worker_exposure(dev, "zmq", bind_all=False, secure=True, insecure=False) is None
    with pytest.raises(UsageError, match="contradict"):
        worker_exposure(dev, "zmq", bind_all=False, secure=True, insecure=True)
    local = load_testbed(_testbed(tmp_path, "127.0.0.1")).device("pi")
    assert worker_exposure(local, "zmq", bind_all=False, secure=False, insecure=False) is None
    with pytest.raises(UsageError, match=r"would listen on \*:"):
        worker_exposure(local, "zmq", bind_all=True, secure=False, insecure=False)


@pytest.mark.integration  # a real worker process
def test_an_insecure_worker_says_what_that_means_in_one_line(tmp_path: Path):
    path = _testbed(tmp_path, "127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "paretopipe", "worker", "--testbed", str(path), "--device", "pi"]
        + ["--bind-all", "--insecure"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        first = proc.stderr.readline().decode()
        assert first.startswith("insecure: worker pi on *:") and "without authentication or encryption" in first
        assert "listening on" in proc.stderr.readline().decode()
        assert psutil.Process(proc.pid).is_running()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_driver_warns_and_rpc_beyond_loopback_needs_insecure(tmp_path: Path):
    tb = load_testbed(_testbed(tmp_path, "192.0.2.10"))
    assert driver_exposure(tb, "zmq", secure=False, insecure=False).startswith("warning: pi without authentication")
    assert driver_exposure(tb, "zmq", secure=True, insecure=False) is None
    with pytest.raises(UsageError, match=r"--backend rpc with endpoints beyond loopback \(pi\) needs --insecure"):
        driver_exposure(tb, "rpc", secure=False, insecure=False)
    assert "run code" in driver_exposure(tb, "rpc", secure=False, insecure=True)
    assert driver_exposure(load_testbed(_testbed(tmp_path, "127.0.0.1")), "rpc", secure=False, insecure=False) is None
    tb_path = _testbed(tmp_path, "192.0.2.10")
    argv = ["run", SKIPNET["name"], "--cuts", "3", "--devices", "pi", "--testbed", str(tb_path), "--backend", "rpc"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "needs --insecure" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration  # a real worker process
def test_a_local_session_refuses_a_plan_its_workers_may_not_build(tmp_path: Path):
    from paretopipe.network.conditions import LinkCondition
    from paretopipe.plan.plan_file import Plan, PlanCut
    from paretopipe.runtime.session import Session

    p0, p1, p2 = free_ports(3)
    path = tmp_path / "tb.toml"
    path.write_text(
        f'name = "local"\n[driver]\nhost = "127.0.0.1"\nport = {p0}\n'
        f'[[devices]]\nname = "a"\nhost = "127.0.0.1"\nport = {p1}\n'
        f'[[devices]]\nname = "b"\nhost = "127.0.0.1"\nport = {p2}\n'
    )
    plan = Plan(model=SKIPNET, batch_size=1, cuts=(PlanCut(3, "body_1_0"),), devices=("a", "b"))
    weighted = Plan(
        model={**SKIPNET, "weights": str(tmp_path / "w" / "x.pt")}, batch_size=1, cuts=plan.cuts, devices=plan.devices
    )
    bare = Session(load_testbed(path))  # not entered: nothing is started or sent
    with pytest.raises(UsageError, match=r"plan c3-a\+b needs module tests.fixtures.toy_models, which the local"):
        bare.setup(plan, ("local", LinkCondition()))
    allowed = Session(load_testbed(path), allow_models=["tests.fixtures"])
    allowed._check_allowed(plan)
    with pytest.raises(UsageError, match="needs weights directory"):
        allowed._check_allowed(weighted)
    Session(load_testbed(path), allow_models=["tests"], weights_dirs=[str(tmp_path / "w")])._check_allowed(weighted)
