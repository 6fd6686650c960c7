"""Network emulation: link conditions, kernel ``tc`` shaping, namespaces and the user-space shaper.

No torch here. A :class:`LinkCondition` says what a directed link should look like, a
:class:`Trace` how it changes over time;
:func:`choose_mechanisms` decides what applies each part (kernel ``tc`` or the user-space shaper)
and its dict is recorded with results.
"""

from paretopipe.network.capabilities import HostCapabilities, probe_capabilities
from paretopipe.network.conditions import LinkCondition, Scenario, load_scenarios, parse_condition, resolve_network
from paretopipe.network.follow import TraceFollower
from paretopipe.network.mechanism import choose_mechanisms, kernel_condition, not_applied, residual_condition
from paretopipe.network.netns import NamespaceNetwork, cleanup_stale
from paretopipe.network.shaper import LinkSchedule, ShapedSender, ShaperStats
from paretopipe.network.tc import TcPlan, build_apply, build_change, build_clear, build_per_destination, build_show
from paretopipe.network.trace import Trace, TraceChange, TracedCondition, load_trace, parse_trace

__all__ = [
    "HostCapabilities",
    "probe_capabilities",
    "LinkCondition",
    "Scenario",
    "load_scenarios",
    "parse_condition",
    "resolve_network",
    "choose_mechanisms",
    "kernel_condition",
    "not_applied",
    "residual_condition",
    "NamespaceNetwork",
    "cleanup_stale",
    "LinkSchedule",
    "ShapedSender",
    "ShaperStats",
    "TcPlan",
    "build_apply",
    "build_change",
    "build_clear",
    "build_per_destination",
    "build_show",
    "Trace",
    "TraceChange",
    "TracedCondition",
    "TraceFollower",
    "load_trace",
    "parse_trace",
]
