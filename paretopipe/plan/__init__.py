"""Planning, pure: cost model, plan search, Pareto utilities and plan files. No torch here.

- :mod:`.costmodel`: predicted latency, throughput, bytes and memory of plans.
- :mod:`.search`: the exact, exhaustive, NSGA-II and local searches over the plan space.
- :mod:`.pareto`: non-dominated masks, hypervolume, knee.
- :mod:`.plan_file`: the plan file a user exports and ``paretopipe run --plan`` loads.

The rule is enforced by an import contract in ``pyproject.toml``. See ``docs/cost-model.md``
and ``docs/planning.md``.
"""
