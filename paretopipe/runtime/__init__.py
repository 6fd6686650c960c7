"""Pipeline runtime: stage workers, the driver, the local launcher and measurement sessions.

The stage loop and the driver are the same for every transport backend.
"""

from paretopipe.runtime.driver import Driver, LatencyResult, StageStats, ThroughputResult
from paretopipe.runtime.records import Measurement, ShapedLink, StageTimes
from paretopipe.runtime.session import MeasureOptions, Session
from paretopipe.runtime.worker import Worker

__all__ = [
    "Driver",
    "LatencyResult",
    "MeasureOptions",
    "Measurement",
    "Session",
    "ShapedLink",
    "StageStats",
    "StageTimes",
    "ThroughputResult",
    "Worker",
]
