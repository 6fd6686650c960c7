"""The sweep: plan per scenario, measure every configuration, report measured fronts."""

from paretopipe.sweep.runner import Config, Sessions, SweepOutcome, SweepSettings, execute, prepare

__all__ = ["Config", "Sessions", "SweepOutcome", "SweepSettings", "execute", "prepare"]
