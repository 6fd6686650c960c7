"""The pool of runtime sessions a sweep measures in: at most one per backend, opened on first use."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from paretopipe.network.conditions import load_scenarios
from paretopipe.sweep.settings import SweepSettings

if TYPE_CHECKING:
    from paretopipe.runtime.session import Session


class Sessions:
    """The runtime sessions of one sweep, at most one per backend, opened on first use.

    The device runtime checks and the measurements share them, so both run on the same worker
    processes (a device can compute faster or slower in one launch of its worker than in the
    next, so figures taken on other workers would misprice the sweep). Use as a context manager;
    every session is closed on exit. ``factory(backend)``, if given, makes the sessions instead
    (anything with :meth:`Session.measure`, used as a context manager), e.g. to replay measurements."""

    def __init__(self, settings: SweepSettings, testbed: Any, factory: Callable[[str], Any] | None = None) -> None:
        self.settings, self.testbed = settings, testbed
        self._factory = factory
        self._open: dict[str, Session] = {}

    def get(self, backend: str) -> Session:
        """The open session of ``backend``; other backends' sessions are closed first (their
        workers would hold the same ports)."""
        from paretopipe.runtime.session import Session

        for other in [b for b in self._open if b != backend]:
            self.drop(other)
        if backend not in self._open and self._factory is not None:
            self._open[backend] = self._factory(backend).__enter__()
        if backend not in self._open:
            st = self.settings
            allow_models, weights_dirs = _allowances(st)
            self._open[backend] = Session(
                self.testbed,
                backend,
                timeout_s=st.timeout_s,
                isolation=st.isolation,
                secure=st.secure,
                allow_models=allow_models,
                weights_dirs=weights_dirs,
            ).__enter__()
        return self._open[backend]

    def drop(self, backend: str) -> None:
        """Close ``backend``'s session (if open); the next :meth:`get` starts fresh workers."""
        session = self._open.pop(backend, None)
        if session is not None:
            with contextlib.suppress(Exception):
                session.__exit__(None, None, None)

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        for backend in list(self._open):
            self.drop(backend)


@contextlib.contextmanager
def sessions_or_own(settings: SweepSettings, sessions: Sessions | None) -> Iterator[Sessions]:
    """``sessions`` if given, else a private pool closed on leaving."""
    if sessions is not None:
        yield sessions
        return
    from paretopipe.testbed import load_testbed

    with Sessions(settings, load_testbed(settings.testbed, load_scenarios(settings.networks_file))) as own:
        yield own


def _allowances(settings: SweepSettings) -> tuple[list[str], list[str]]:
    """What local workers must be allowed to build the sweep's model (its factory module and
    weights directory): the user named it on this command line and owns both ends."""
    from paretopipe.model.registry import resolve_spec
    from paretopipe.runtime.policy import allowances

    st = settings
    spec = resolve_spec(st.model, st.input_shape, st.weights, st.seed, st.leaf, st.inputs)
    return allowances(spec.to_dict())
