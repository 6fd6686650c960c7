"""Cost model: predicted latency, throughput, bytes on the wire and peak memory of partition plans.

Pure numpy, no torch. An :class:`Instance` holds every number the planner needs (per-node times
per device, cut sizes, link parameters); a :class:`PlanIndices` is K-1 increasing cut indices plus K
distinct devices. :func:`evaluate_plans` scores many plans of the same K at once (used by every
search method); :func:`evaluate_plan` gives the full breakdown of one plan (plan files, plots).

Formulas (index ``D`` in the link matrices is the driver; docs/cost-model.md):

- ``stage_ms[k]`` = sum of ``node_ms[d_k, n]`` over the nodes of stage k (profiled time S).
- ``copy_ms[k]`` = ``device_copy_in_ms[d_k] + device_copy_in_ms_per_byte[d_k] * bytes entering``
  + ``device_copy_out_ms[d_k] + device_copy_out_ms_per_byte[d_k] * bytes leaving`` (host <->
  accelerator copies; bytes entering stage 0 are the input, bytes leaving the last the output).
- a message of n bytes over link (s, t) costs the transport ``own = overhead[s,t] +
  n*8/bandwidth[s,t]*1e3`` and an emulated link ``wire = n*8/shaped[s,t]*1e3`` on top:
  ``transfer_ms = own + wire + delay[s,t]`` (one message pays both in turn) and ``busy_ms =
  max(own, wire)`` (in a stream the link serialises one message while the transport handles the next).
- ``latency_ms`` = driver->d_0 transfer + stage and inter-stage transfers in order + d_last->driver,
  where a stage adds ``latency_slope[d_k] * S + latency_intercept_ms[d_k] + copy_ms[k]``.
- ``bottleneck_ms`` = max of every stage's cycle (``cycle_slope[d_k] * S + cycle_intercept_ms[d_k] + copy_ms[k]``,
  the time the stage holds its device per item when the pipeline is full; the worker copies in
  series with compute), the cycles of the
  stages on each shared CPU added up, and every link's busy_ms (the wire pipelines, so delay does
  not limit throughput); ``throughput_ips = batch * 1e3 / bottleneck_ms``, capped by Little's law
  ``window * batch * 1e3 / latency_ms`` when a window is set.
- stage peak memory = its parameter bytes + the largest live activation set over its span.

Sums are accumulated in plan order (link, then stage) everywhere, so the exact planner's partial
sums are bit-for-bit the values this module computes.
"""

from paretopipe.plan.costmodel.breakdown import LinkCost, PlanBreakdown, evaluate_plan
from paretopipe.plan.costmodel.evaluate import PlanIndices, PlanMetrics, evaluate_plans
from paretopipe.plan.costmodel.instance import Instance

__all__ = ["Instance", "PlanIndices", "PlanMetrics", "evaluate_plans", "LinkCost", "PlanBreakdown", "evaluate_plan"]
