"""Build pipeline stage modules from a traced graph and check that their chain is exact.

Stage k of a plan runs the nodes between cut k-1 and cut k. Its inputs are the live set of the
cut before it (for stage 0, the model inputs) and its outputs the live set of the cut after it
(for the last stage, the leaves of the model output), so a tensor produced in stage 0 and used in
stage 2 passes through stage 1. Each stage is an ``fx.GraphModule`` whose graph is copied node by
node (``Graph.node_copy``) from the traced model and which owns only the submodules and constants
it uses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

if TYPE_CHECKING:
    from paretopipe.model.graph import Cut, ModelGraph


def stage_bounds(graph: ModelGraph, cuts: Sequence[Cut]) -> list[tuple[int, int]]:
    """Inclusive node position ranges ``(first, last)`` of each stage."""
    ends = [c.index for c in cuts] + [len(graph.fx_nodes) - 1]
    starts = [0] + [c.index + 1 for c in cuts]
    return list(zip(starts, ends))


def stage_io(graph: ModelGraph, cuts: Sequence[Cut]) -> list[tuple[list[str], list[str]]]:
    """Names of each stage's input and output values, in the order the stage takes/returns them."""
    ins = [[p.name for p in graph.placeholders]] + [list(c.tensors) for c in cuts]
    outs = [list(c.tensors) for c in cuts] + [[n.name for n in graph.output_leaves]]
    return list(zip(ins, outs))


def build_stages(graph: ModelGraph, cuts: Sequence[Cut]) -> list[fx.GraphModule]:
    """One GraphModule per stage; see the module docstring."""
    stages = []
    by_name = {n.name: n for n in graph.gm.graph.nodes}
    for k, ((first, last), (in_names, out_names)) in enumerate(zip(stage_bounds(graph, cuts), stage_io(graph, cuts))):
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for name in in_names:
            env[by_name[name]] = g.placeholder(name)
        for node in graph.fx_nodes[first : last + 1]:
            for inp in node.all_input_nodes:
                if inp not in env and inp.op == "get_attr":
                    env[inp] = g.node_copy(inp)
            env[node] = g.node_copy(node, env.__getitem__)
        g.output(tuple(env[by_name[name]] for name in out_names))
        stage = fx.GraphModule(graph.gm, g, class_name=f"Stage{k}")
        stage.eval()
        stages.append(stage)
    return stages


def split_stages(graph: ModelGraph, cut_indices: Sequence[int]) -> list[fx.GraphModule]:
    """K stage modules for K-1 cut indices; each takes and returns its live tensors as a tuple.

    Chaining them (:func:`run_chain`) reproduces the model's output. Raises CutError for cut
    indices that are out of range, not strictly increasing, or not legal cuts.
    """
    return build_stages(graph, graph.check_cuts(cut_indices))


def run_chain(stages: Sequence[torch.nn.Module], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Feed ``inputs`` through the stages in order; returns the last stage's output tuple."""
    values: tuple[Any, ...] = inputs
    with torch.no_grad():
        for stage in stages:
            values = tuple(stage(*values))
    return values


def assemble_output(graph: ModelGraph, leaves: Sequence[torch.Tensor]) -> Any:
    """Rebuild the model's output structure (tensor, tuple, dict...) from the last stage's leaves."""
    value_of = dict(zip(graph.output_leaves, leaves))
    return fx.node.map_arg(graph.output_node.args[0], lambda n: value_of[n])


@dataclass(frozen=True)
class VerifyResult:
    """Whether the chained stages at ``cuts`` reproduce the model bit for bit."""

    cuts: tuple[int, ...]
    exact: bool
    max_abs_diff: float


def _flat(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            out.extend(_flat(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(_flat(v))
    return out


def compare_outputs(expected: Any, actual: Any) -> tuple[bool, float]:
    """(bitwise equal, max absolute difference) between two output structures."""
    exp, act = _flat(expected), _flat(actual)
    if len(exp) != len(act):
        return False, float("inf")
    exact, diff = True, 0.0
    for e, a in zip(exp, act):
        if e.shape != a.shape or e.dtype != a.dtype:
            return False, float("inf")
        if not torch.equal(e, a):
            exact = False
            if e.numel():
                diff = max(diff, (e.double() - a.double()).abs().max().item())
    return exact, diff


def verify(graph: ModelGraph, cut_sets: Sequence[Sequence[int]], inputs: Sequence[torch.Tensor]) -> list[VerifyResult]:
    """Split at each cut set, chain the stages, and compare with the unsplit model's output."""
    expected = graph.run_model([t.clone() for t in inputs])
    results = []
    for cut_set in cut_sets:
        stages = split_stages(graph, cut_set)
        leaves = run_chain(stages, *(t.clone() for t in inputs))
        exact, diff = compare_outputs(expected, assemble_output(graph, leaves))
        results.append(VerifyResult(tuple(cut_set), exact, diff))
    return results


def verification_cut_sets(
    cut_indices: Sequence[int], multi_stage_samples: int = 3, seed: int = 0
) -> list[tuple[int, ...]]:
    """Every single cut, plus a few random 3- and 4-stage cut sets (deterministic for a seed)."""
    sets: list[tuple[int, ...]] = [(c,) for c in cut_indices]
    rng = random.Random(seed)
    for k in (2, 3):
        if len(cut_indices) >= k:
            for _ in range(multi_stage_samples):
                sets.append(tuple(sorted(rng.sample(list(cut_indices), k))))
    return sets
