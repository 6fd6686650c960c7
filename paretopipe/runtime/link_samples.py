"""Timed transfers for the link estimate: from the stamps items carry, and from probes.

An item of an adaptive run carries, per stage, when the stage received it, when it was done and
how long it had waited for it (:func:`~paretopipe.runtime.protocol.check_stamps`). With the
driver's own send and receive times, every hop of the item that crosses a link between two places
(devices; the driver counts as the device it shares a host with) gives one transfer: from when the
message could leave (when it was sent, or when the link was free of the message before it) to when
the receiver took it. The link was free of the message before when that one arrived, less the
link's delay. The delay is taken at an upper bound, the shortest recent transfer
(:meth:`~paretopipe.runtime.link_estimate.LinkEstimator.delay_bound_ms`), so that a transfer errs
long, never short: taken at its estimate, a message queued behind another would measure as its
serialisation plus the estimated delay, whatever the real delay, and the estimate would confirm
itself. A hop that reached a busy stage is left out (it waited there, not on the link). A probe is
a ping carrying a payload, answered by a pong that says when the worker took it: the payload out
and the pong back are two more transfers. Optionally, a probe's payload is sized so that the
link's jitter cannot move the bandwidth it gives by more than a set fraction
(:meth:`LinkSampler.probe_size`).
An item still in flight long after the estimate says it would be back caps the estimate
(:meth:`LinkSampler.overdue`). Stamps of workers on other
hosts are put on the driver's clock with :attr:`LinkSampler.offset_ns`. See docs/running.md
(adaptive runs).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence

from paretopipe.network.conditions import LinkCondition
from paretopipe.plan.costmodel.relink import PlanTerms
from paretopipe.runtime import protocol as P
from paretopipe.runtime.link_estimate import CENSOR_FACTOR, CENSOR_SLACK_MS, LinkEstimator, censored_bandwidth_bps
from paretopipe.testbed import DRIVER
from paretopipe_backends.base import Message

Pair = tuple[str, str]  # two places, sorted
BUSY_NS = 200_000  # a stage that had waited less than this for an item was busy when it arrived
PONG_NBYTES = 256  # about what a pong (or a ping's header) is on the wire

__all__ = ["BUSY_NS", "LinkSampler", "Pair"]


class LinkSampler:
    """Feeds ``estimator`` with the transfers of stamped items and of probes.

    ``place`` maps an endpoint name to its place (the driver to its device). ``probe_nbytes`` and
    ``probe_every_s``: the payload of a probe (the smallest, when probes are sized) and how often a
    link is probed at most. ``tolerance``: size each probe so that the link's jitter moves the
    bandwidth it gives by at most this fraction (:meth:`probe_size`; None: every probe carries
    ``probe_nbytes``); ``largest``: per link, the largest message a candidate sends over it, which
    no probe exceeds.
    """

    def __init__(
        self,
        estimator: LinkEstimator,
        place: Callable[[str], str],
        probe_nbytes: int,
        probe_every_s: float,
        tolerance: float | None = None,
        largest: dict[Pair, float] | None = None,
    ) -> None:
        self.estimator = estimator
        self.place = place
        self.probe_nbytes = probe_nbytes
        self.probe_every_s = probe_every_s
        self.tolerance = tolerance
        self.largest = largest or {}
        self.offset_ns: dict[str, int] = {}  # device -> its clock minus the driver's
        self.probes_sent = 0
        self.probe_bytes = 0  # payload bytes of every probe sent
        self.censor_factor = CENSOR_FACTOR
        self.censor_slack_ms = CENSOR_SLACK_MS
        self._previous: dict[int, tuple[list[int], list[int]]] = {}  # plan -> the last item's sent/got times
        self._probes: dict[str, tuple[str, int, int]] = {}  # nonce -> (device, send ns, payload bytes)
        self._last_probe_s: dict[str, float] = {}
        self._last_size: dict[Pair, int] = {}  # pair -> the payload of its last sized probe
        self._noise: dict[Pair, list[tuple[float, float]]] = {}  # pair -> (s, noise ms) over the horizon

    def pair(self, src: str, dst: str) -> Pair | None:
        """The link between the places of ``src`` and ``dst``; None when they are one place."""
        a, b = self.place(src), self.place(dst)
        return None if a == b else (min(a, b), max(a, b))

    def _driver_clock(self, device: str, t_ns: int) -> int:
        return t_ns - self.offset_ns.get(device, 0)

    def item(
        self, plan: int, devices: Sequence[str], hop_nbytes: Sequence[float], t0_ns: int, msg: Message, start_ns: int
    ) -> None:
        """One transfer per link-crossing hop of an item of ``plan`` (an index) that ran on
        ``devices``, sent at ``t0_ns``; its result is ``msg``. Times in samples: s since ``start_ns``."""
        stamps = msg.header.get("stamps")
        if not isinstance(stamps, list) or len(stamps) != len(devices):
            return
        try:
            marks = P.check_stamps(stamps)
        except Exception:
            return
        route = [DRIVER, *devices, DRIVER]
        sent = [t0_ns, *(self._driver_clock(d, marks[k][1]) for k, d in enumerate(devices))]
        got = [*(self._driver_clock(d, marks[k][0]) for k, d in enumerate(devices)), msg.recv_ns]
        prev = self._previous.get(plan)
        self._previous[plan] = (sent, got)
        timed: dict[Pair, list[tuple[float, float]]] = {}
        for j, nbytes in enumerate(hop_nbytes):
            pair = self.pair(route[j], route[j + 1])
            if pair is None or (j < len(devices) and marks[j][2] < BUSY_NS):
                continue  # one place, or the stage was busy when the item arrived: it waited there
            t_s = (got[j] - start_ns) / 1e9
            leave = sent[j]
            if prev is not None:  # a message sent before the previous one arrived left when the link was free
                bound_ms = self.estimator.delay_bound_ms(pair, t_s)
                if bound_ms is not None:
                    leave = max(leave, prev[1][j] - int(bound_ms * 1e6))
            self.estimator.add(pair, t_s, nbytes, (got[j] - leave) / 1e6)
            timed.setdefault(pair, []).append((nbytes, (got[j] - leave) / 1e6))
        for pair, transfers in timed.items():
            self.estimator.lift_if_fast(pair, transfers, (msg.recv_ns - start_ns) / 1e9)

    def overdue(self, t_s: float, terms: PlanTerms, age_ms: float, since_result_ms: float | None) -> float | None:
        """Cap the bandwidth estimate of the one link a plan's hops cross when its oldest item in
        flight (sent ``age_ms`` ago; the plan's last result came ``since_result_ms`` ago) is overdue
        under the current estimate (:func:`~paretopipe.runtime.link_estimate.censored_bandwidth_bps`);
        returns the cap set, or None (not overdue, no estimate yet, or a plan that crosses no link or
        several: the item cannot say which one is slow)."""
        on_link = {(h.src, h.dst): pair for h in terms.hops if (pair := self.pair(h.src, h.dst)) is not None}
        if len(set(on_link.values())) != 1:
            return None
        pair = next(iter(on_link.values()))
        est = self.estimator.estimate(pair, t_s)
        if est is None:
            return None
        condition = LinkCondition(est.bandwidth_bps, est.delay_ms)
        bound = censored_bandwidth_bps(
            terms, set(on_link), condition, age_ms, since_result_ms, self.censor_factor, self.censor_slack_ms
        )
        if bound is None:
            return None
        nbytes = max(h.nbytes for h in terms.hops if (h.src, h.dst) in on_link)
        self.estimator.cap(pair, t_s, bound, nbytes)
        return bound

    def probe_size(self, pair: Pair, t_s: float, sized: bool = True) -> int:
        """The payload of the next probe over ``pair``, in bytes.

        A probe's payload takes ``nbytes / bandwidth`` longer than the pong, and that difference is
        the bandwidth; jitter (two-sided: it can make a transfer shorter as well as longer) shifts
        the fastest recent transfer of each size by up to the link's noise
        (:meth:`~paretopipe.runtime.link_estimate.LinkEstimator.noise_ms`). With a payload too small,
        a 16 KB probe on a 30 Mbit/s link with 3 ms of jitter, that shift is as large as the
        difference itself and the bandwidth comes out several times too high. So the payload is the
        size whose time on the link is the noise divided by ``tolerance``, at the estimated
        bandwidth, on a ladder of sizes a factor of 2 apart, growing by at most one step per probe
        (right after the link changes, the spread of one size's transfers is the change, not
        jitter, for as long as old transfers are among its last few). It is at least
        ``probe_nbytes`` and at most the largest message a candidate sends over the link (no plan
        needs the bandwidth resolved finer than its own messages do), and no longer on the link
        than ``probe_every_s`` at the estimated bandwidth. ``sized`` False (the link carries the
        current plan's items, which a large probe would hold up): ``probe_nbytes``. When the size
        changes, the samples of the old size are dropped: a size no longer sent must not hold the
        estimate to the condition it saw."""
        previous = self._last_size.get(pair, self.probe_nbytes)
        size = self.probe_nbytes
        if sized and self.tolerance is not None and (est := self.estimator.estimate(pair, t_s)) is not None:
            largest = max(self.probe_nbytes, int(self.largest.get(pair, self.probe_nbytes)))
            if est.bandwidth_bps is None:  # too fast to tell with what was sent: go larger
                wanted = float(largest)
            else:
                seen = [(t, ms) for t, ms in self._noise.get(pair, []) if t_s - t <= self.estimator.horizon_s]
                self._noise[pair] = seen = [*seen, (t_s, self.estimator.noise_ms(pair, t_s))]
                noise_ms = max(ms for _, ms in seen)
                wanted = noise_ms / self.tolerance * est.bandwidth_bps / 8e3 if self.tolerance > 0 else largest
                largest = min(largest, int(self.probe_every_s * est.bandwidth_bps / 8))
            steps = math.ceil(math.log2(max(wanted, 1.0) / self.probe_nbytes))
            size = self.probe_nbytes << max(0, steps)
            size = min(max(size, previous // 2), 2 * previous, max(self.probe_nbytes, largest))
        if size != previous:
            self.estimator.forget(pair, previous + PONG_NBYTES)
        self._last_size[pair] = size
        return size

    def probes_due(self, t_s: float, pairs: Iterable[Pair], busy: Collection[Pair] = ()) -> list[tuple[str, str, int]]:
        """``(device, nonce, payload bytes)`` of the probes to send now: to the other end of each of
        ``pairs`` the driver's place is on, that carried nothing for ``probe_every_s`` or only sizes
        too close to tell delay from bandwidth, and has no probe on its way. Probes over ``busy``
        links (those the current plan's items cross) carry ``probe_nbytes``, others are sized
        (:meth:`probe_size`)."""
        here = self.place(DRIVER)
        due = []
        for pair in pairs:
            device = pair[0] if pair[1] == here else pair[1]
            if here not in pair or any(d == device for d, _, _ in self._probes.values()):
                continue
            last = self.estimator.last_sample_s(pair)
            est = self.estimator.estimate(pair, t_s)
            quiet = last is None or t_s - last >= self.probe_every_s
            narrow = est is not None and not est.spread
            if not (quiet or (narrow and t_s - self._last_probe_s.get(device, -1e9) >= self.probe_every_s)):
                continue
            self._last_probe_s[device] = t_s
            nonce = uuid.uuid4().hex[:8]
            due.append((device, nonce, self.probe_size(pair, t_s, sized=pair not in busy)))
        return due

    def probe_sent(self, device: str, nonce: str, t_ns: int, nbytes: int | None = None) -> None:
        """Record a probe with a payload of ``nbytes`` (default ``probe_nbytes``) handed to the
        transport at ``t_ns``."""
        nbytes = self.probe_nbytes if nbytes is None else nbytes
        self._probes[nonce] = (device, t_ns, nbytes)
        self.probes_sent += 1
        self.probe_bytes += nbytes

    def probe_back(self, msg: Message, start_ns: int) -> None:
        """The transfers of the probe ``msg`` (a pong) answers: its payload out, the pong back."""
        entry = self._probes.pop(str(msg.header.get("nonce")), None)
        clock = msg.header.get("clock_ns")
        if entry is None or not isinstance(clock, int):
            return
        device, a0, nbytes = entry
        pair = self.pair(DRIVER, device)
        if pair is None:
            return
        w = self._driver_clock(device, clock)
        t_s = (msg.recv_ns - start_ns) / 1e9
        waited = msg.header.get("waited_ns")
        transfers = [(float(PONG_NBYTES), (msg.recv_ns - w) / 1e6)]
        if isinstance(waited, int) and waited >= BUSY_NS:  # else the ping waited behind an item
            transfers.append((float(nbytes + PONG_NBYTES), (w - a0) / 1e6))
        for size, ms in transfers:
            self.estimator.add(pair, t_s, size, ms)
        self.estimator.lift_if_fast(pair, transfers, t_s)
