"""The sweep: plan per scenario, measure every configuration, report measured fronts."""

from paretopipe.sweep.configs import prepare
from paretopipe.sweep.runner import execute
from paretopipe.sweep.session_pool import Sessions
from paretopipe.sweep.settings import Config, SweepOutcome, SweepSettings

__all__ = ["Config", "Sessions", "SweepOutcome", "SweepSettings", "execute", "prepare"]
