"""Planner: search the partition plans of an :class:`~paretopipe.plan.costmodel.Instance` for the
latency/throughput (and optionally bytes, memory) Pareto front. Pure numpy, no torch.

Modules: :mod:`space` (counting and enumerating plans), :mod:`objectives`, :mod:`exhaustive`,
:mod:`exact` (dynamic programming, with :mod:`labels` for dominance pruning and :mod:`symmetry`
for identical devices), :mod:`nsga2` (with :mod:`localsearch` polishing its front), :mod:`cost`
(the estimates ``auto`` chooses by), and :mod:`dispatch` (the entry point and result).
"""

from paretopipe.plan.search.dispatch import AUTO_EXHAUSTIVE_MAX, METHODS, SearchResult, search
from paretopipe.plan.search.exact import exact_supports
from paretopipe.plan.search.objectives import OBJECTIVES
from paretopipe.plan.search.space import space_size

__all__ = ["search", "SearchResult", "space_size", "OBJECTIVES", "METHODS", "AUTO_EXHAUSTIVE_MAX", "exact_supports"]
