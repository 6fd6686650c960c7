"""The sweep: plan per scenario, measure every configuration, report measured fronts."""

from paretopipe.sweep.runner import Config, SweepOutcome, SweepSettings, execute, prepare

__all__ = ["Config", "SweepOutcome", "SweepSettings", "execute", "prepare"]
