"""Write the synthetic trace files shipped in testbed/traces/, reproducibly.

Every file says in its header that it is synthetic and the rule that made it:

* ``step.csv``: the ``wifi`` scenario (50 Mbit/s, 5 ms, 1 ms jitter) and the ``3g`` scenario
  (2 Mbit/s, 100 ms, 10 ms jitter) of testbed/networks.toml, alternating every 10 s.
* ``on-off.csv``: 20 Mbit/s at 20 ms for 8 s, then a near-outage (100 kbit/s at 500 ms) for 2 s.
* ``random-walk.csv``: one piece a second for 120 s; log10 of the bandwidth walks with normal steps
  (sigma 0.2) reflected into [1, 60] Mbit/s, and the delay walks with normal steps (sigma 4 ms)
  reflected into [20, 90] ms, jitter a tenth of the delay: an LTE-like spread, not a recording.

Run: python benchmarks/make_traces.py [--out testbed/traces] [--seed 37]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paretopipe.network.link import LinkCondition
from paretopipe.network.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python benchmarks/make_traces.py"

WIFI = LinkCondition(50e6, 5.0, 1.0)
THREE_G = LinkCondition(2e6, 100.0, 10.0)


def step_trace() -> Trace:
    return Trace((0.0, 10.0), (WIFI, THREE_G), 20.0)


def on_off_trace() -> Trace:
    return Trace((0.0, 8.0), (LinkCondition(20e6, 20.0), LinkCondition(100e3, 500.0)), 10.0)


def _reflect(x: float, lo: float, hi: float) -> float:
    while not lo <= x <= hi:
        x = 2 * lo - x if x < lo else 2 * hi - x
    return x


def random_walk_trace(seed: int, seconds: int = 120) -> Trace:
    rng = random.Random(seed)
    log_bw, delay = math.log10(20e6), 40.0
    conds = []
    for _ in range(seconds):
        bw_kbit = round(10**log_bw / 1e5) * 100  # to 0.1 Mbit/s
        conds.append(LinkCondition(bw_kbit * 1e3, round(delay, 1), round(delay / 10, 1)))
        log_bw = _reflect(log_bw + rng.gauss(0, 0.2), math.log10(1e6), math.log10(60e6))
        delay = _reflect(delay + rng.gauss(0, 4.0), 20.0, 90.0)
    return Trace(tuple(float(t) for t in range(seconds)), tuple(conds), float(seconds))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "testbed" / "traces", help="Directory to write into.")
    ap.add_argument("--seed", type=int, default=37, help="Seed of the random walk.")
    args = ap.parse_args(argv)
    made_by = f"synthetic: written by `{COMMAND} --seed {args.seed}`, not a recording."
    files = {
        "step.csv": (
            step_trace(),
            ["rule: wifi (50mbit, 5 ms +/- 1 ms) and 3g (2mbit, 100 ms +/- 10 ms) alternate every 10 s."],
        ),
        "on-off.csv": (
            on_off_trace(),
            ["rule: on (20mbit, 20 ms) for 8 s, then a near-outage (100kbit, 500 ms) for 2 s."],
        ),
        "random-walk.csv": (
            random_walk_trace(args.seed),
            [
                "rule: one piece a second; log10(bandwidth) takes normal steps (sigma 0.2) reflected",
                "into [1, 60] Mbit/s; delay takes normal steps (sigma 4 ms) reflected into [20, 90] ms;",
                "jitter = delay / 10.",
            ],
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (trace, rule) in files.items():
        header = [made_by, *rule, "Rows start pieces; the last row (t_s only) is the period; the trace loops."]
        (args.out / name).write_text(trace.to_csv(header))
        print(f"wrote {args.out / name}: {len(trace.times_s)} pieces, period {trace.period_s:g} s")


if __name__ == "__main__":
    main()
