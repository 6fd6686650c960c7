"""Trace a model with torch.fx into an ordered graph and find every legal cut.

Nodes are kept in the traced (topological) order. A cut after position ``i`` carries the *live
set*: every value produced at or before ``i`` (the model inputs included) and used after it, so
skip connections and concatenations are charged correctly. A cut is legal when every live value
can cross it: a tensor, or a small serialisable value such as a shape or a tuple of tensors from
``chunk`` (see :mod:`paretopipe.model.values`); a module or a generator cannot. Block cuts follow
the rule in ``docs/bring-your-model.md``.
"""

from __future__ import annotations

import functools
import linecache
import threading
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from paretopipe.errors import CutError, ModelError
from paretopipe.model.values import ValueInfo, describe

if TYPE_CHECKING:
    from paretopipe.model.registry import ModelSpec

Granularity = Literal["node", "block"]
TraceMethod = Literal["fx", "export"]
_COMPUTE_OPS = ("call_module", "call_function", "call_method")
#: Fewest block cuts a model with at least that many legal cuts gets (see _block_flags).
MIN_BLOCK_CUTS = 4
#: Shares of the model's nodes the last-resort block rule aims at.
FALLBACK_SHARES = 8
# torch.fx patches module calls process-wide while tracing: two threads must not trace at once.
_TRACE_LOCK = threading.Lock()


@dataclass(frozen=True)
class NodeInfo:
    """One compute node: position, fx name, what it runs, its block, sizes at the example batch."""

    index: int
    name: str
    op: str
    target: str
    block: str
    out_nbytes: int
    is_tensor: bool
    num_params: int
    param_nbytes: int


@dataclass(frozen=True)
class Cut:
    """A legal cut after node ``index``: the values crossing it (``tensors`` names them: tensors,
    or small values such as shapes and tuples of tensors) and their size on the wire."""

    index: int
    after: str
    tensors: tuple[str, ...]
    nbytes: int
    params_before: int
    is_block: bool


class _Tracer(fx.Tracer):
    """fx tracer that keeps user-named modules (qualified name or class name) as single nodes."""

    def __init__(self, leaf_modules: Iterable[str] = (), autowrap_functions: Iterable[object] = ()) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))  # type: ignore[arg-type]
        self.extra_leaves = set(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.extra_leaves or type(m).__name__ in self.extra_leaves:
            return True
        return super().is_leaf_module(m, qualname)


def _trace_error(model: nn.Module, exc: Exception) -> ModelError:
    """Name the module and source line where tracing failed, and what to do about it."""
    by_id = {id(m): name for name, m in model.named_modules()}
    where = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in by_id:
            qual = by_id[id(owner)] or "<root>"
            line = linecache.getline(frame.f_code.co_filename, lineno).strip()
            where = f" in module {qual!r} ({type(owner).__name__}) at `{line}`"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    leaf = where.split("'")[1] if "'" in where else "MODULE"
    return ModelError(
        f"torch.fx cannot trace {type(model).__name__}{where}: {reason}",
        f"keep that module whole with --leaf {leaf} (it becomes one node), or rewrite the "
        "data-dependent Python control flow with tensor ops",
    )


def _is_container(mod: nn.Module | None) -> bool:
    """Pure containers are looked through when naming blocks (features -> features.3)."""
    if mod is None:
        return False
    if type(mod) in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        return True
    # A Sequential subclass that only sequences sub-blocks (e.g. a stage of blocks) is a container;
    # one that sequences plain layers (conv-bn-relu) is a block.
    return (
        isinstance(mod, nn.Sequential)
        and type(mod).forward is nn.Sequential.forward
        and any(any(True for _ in c.children()) for c in mod.children())
    )


def _module_paths(node: fx.Node) -> list[str]:
    """Qualified names of the modules a node runs inside, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p in (v[0] if isinstance(v, tuple) else k for k, v in stack.items()) if p]
    if node.op == "call_module" and (not paths or paths[-1] != node.target):
        paths.append(str(node.target))
    return paths


def _assign_blocks(nodes: Sequence[fx.Node], modules: dict[str, nn.Module]) -> list[str]:
    """The block of each node: its outermost module that is not a pure container and does not
    hold more than half of the model (an encoder wrapping all layers is looked into, too).
    Nodes outside any module (a top-level flatten) are their own block."""
    all_paths = [_module_paths(n) for n in nodes]
    size: dict[str, int] = {}
    for paths in all_paths:
        for p in paths:
            size[p] = size.get(p, 0) + 1
    blocks = []
    for node, paths in zip(nodes, all_paths):
        block = node.name
        for i, path in enumerate(paths):
            deeper = i + 1 < len(paths)
            if _is_container(modules.get(path)) or (deeper and size[path] > len(nodes) / 2):
                continue
            block = path
            break
        else:
            block = paths[-1] if paths else node.name
        blocks.append(block)
    return blocks


_UNKNOWN = ValueInfo(False, 0, "unknown", "its value was not seen while tracing")


def _info(node: fx.Node) -> ValueInfo:
    return node.meta.get("paretopipe_value", _UNKNOWN)


class _Recorder(fx.Interpreter):
    """Runs the graph once on the example inputs, recording what each value is (see values.py)."""

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        if n.op != "output":
            n.meta["paretopipe_value"] = describe(out)
            if isinstance(out, torch.Tensor):
                n.meta["tensor_meta"] = _extract_tensor_metadata(out)
        return out


class ModelGraph:
    """An fx-traced model in topological order, with its legal cuts and a way to split it.

    Build it with :func:`trace`. Positions index ``nodes`` (compute nodes only: placeholders,
    outputs and constant attributes are not positions; constants are copied into every stage
    that uses them).
    """

    def __init__(self, model: nn.Module, gm: fx.GraphModule, batch_size: int) -> None:
        self.model = model
        self.gm = gm
        self.batch_size = batch_size
        graph_nodes = list(gm.graph.nodes)
        self.placeholders = [n for n in graph_nodes if n.op == "placeholder"]
        self.output_node = next(n for n in graph_nodes if n.op == "output")
        self.fx_nodes = [n for n in graph_nodes if n.op in _COMPUTE_OPS]
        self.position = {n: i for i, n in enumerate(self.fx_nodes)}
        self.output_leaves: list[fx.Node] = []
        fx.node.map_arg(self.output_node.args[0], self._collect_output_leaf)
        self.nodes = self._describe_nodes()
        self._live = self._live_sets()
        self._cuts = self._find_cuts()

    def _collect_output_leaf(self, n: fx.Node) -> fx.Node:
        if n not in self.output_leaves:
            self.output_leaves.append(n)
        return n

    # -- construction ----------------------------------------------------------------------
    def _describe_nodes(self) -> list[NodeInfo]:
        blocks = _assign_blocks(self.fx_nodes, dict(self.model.named_modules()))
        seen_params: set[int] = set()
        infos = []
        for i, n in enumerate(self.fx_nodes):
            tensors: list[torch.Tensor] = []
            if n.op == "call_module":
                sub = self.gm.get_submodule(str(n.target))
                tensors = [*sub.parameters(), *sub.buffers()]
            for inp in n.all_input_nodes:
                if inp.op == "get_attr":
                    value = _fetch_attr(self.gm, str(inp.target))
                    if isinstance(value, torch.Tensor):
                        tensors.append(value)
            fresh = [t for t in tensors if id(t) not in seen_params]
            seen_params.update(id(t) for t in fresh)
            nbytes, is_tensor = _info(n).nbytes, isinstance(n.meta.get("tensor_meta"), TensorMetadata)
            infos.append(
                NodeInfo(
                    index=i,
                    name=n.name,
                    op=n.op,
                    target=n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target)),
                    block=blocks[i],
                    out_nbytes=nbytes,
                    is_tensor=is_tensor,
                    num_params=sum(t.numel() for t in fresh if isinstance(t, nn.Parameter)),
                    param_nbytes=sum(t.numel() * t.element_size() for t in fresh),
                )
            )
        return infos

    def _value_nodes(self) -> list[fx.Node]:
        return [*self.placeholders, *self.fx_nodes]

    def _pos(self, n: fx.Node) -> int:
        return -1 if n.op == "placeholder" else self.position[n]

    def _last_use(self, n: fx.Node) -> int:
        last = self._pos(n)
        for user in n.users:
            last = max(last, len(self.fx_nodes) if user.op == "output" else self.position.get(user, last))
        return last

    def _live_sets(self) -> list[list[fx.Node]]:
        """Live values after each position 0..N-2 (an incremental sweep, O(N + live))."""
        n_pos = len(self.fx_nodes)
        last = {v: self._last_use(v) for v in self._value_nodes()}
        active: dict[fx.Node, None] = {p: None for p in self.placeholders if last[p] > -1}
        lives = []
        for i, node in enumerate(self.fx_nodes[: max(n_pos - 1, 0)]):
            if last[node] > i:
                active[node] = None
            for v in [v for v in active if last[v] <= i]:
                del active[v]
            lives.append(list(active))
        return lives

    def _find_cuts(self) -> list[Cut]:
        legal = [i for i, live in enumerate(self._live) if live and all(_info(v).crossable for v in live)]
        blocks = self._block_flags(legal)
        params = [0]
        for info in self.nodes:
            params.append(params[-1] + info.num_params)
        return [
            Cut(
                i,
                self.nodes[i].name,
                tuple(v.name for v in self._live[i]),
                sum(self._value_nbytes(v) for v in self._live[i]),
                params[i + 1],
                i in blocks,
            )
            for i in legal
        ]

    def _block_flags(self, legal: Sequence[int]) -> set[int]:
        """Block cuts among the legal positions, adding rules until there are enough of them
        (at least ``MIN_BLOCK_CUTS``, or every legal cut if fewer) and no stretch without one is
        longer than half of the model:

        1. between two blocks, with exactly one tensor crossing (plus small non-tensor values);
        2. also between two blocks with more tensors crossing;
        3. also the legal cut nearest each of ``FALLBACK_SHARES`` equal shares of the nodes
           (fewest bytes on a tie).
        """
        n = len(self.fx_nodes)
        want = min(MIN_BLOCK_CUTS, len(legal))

        def enough(chosen: set[int]) -> bool:
            marks = [-1, *sorted(chosen), n - 1]
            return len(chosen) >= want and max(b - a for a, b in zip(marks, marks[1:])) <= n / 2

        boundary = [i for i in legal if self.nodes[i].block != self.nodes[i + 1].block]
        chosen = {i for i in boundary if self._tensor_leaves(i) == 1}
        if not enough(chosen):
            chosen.update(boundary)
        if not enough(chosen) and legal:
            for j in range(1, FALLBACK_SHARES):
                target = j * n / FALLBACK_SHARES - 1
                chosen.add(
                    min(legal, key=lambda i: (abs(i - target), sum(self._value_nbytes(v) for v in self._live[i])))
                )
        return chosen

    def _tensor_leaves(self, index: int) -> int:
        return sum(_info(v).tensors for v in self._live[index])

    def _is_tensor(self, v: fx.Node) -> bool:
        return isinstance(v.meta.get("tensor_meta"), TensorMetadata)

    def _value_nbytes(self, v: fx.Node) -> int:
        return _info(v).nbytes

    # -- queries ---------------------------------------------------------------------------
    @property
    def cuts(self) -> list[Cut]:
        """Every legal cut (node granularity), in order."""
        return list(self._cuts)

    def cuts_at(self, granularity: Granularity = "node") -> list[Cut]:
        """Legal cuts at ``node`` granularity, or only block boundaries (``block``)."""
        if granularity == "node":
            return self.cuts
        if granularity == "block":
            return [c for c in self._cuts if c.is_block]
        raise CutError(f"unknown granularity {granularity!r}", "use node or block")

    def live_values(self, index: int) -> list[fx.Node]:
        """The values crossing a cut after position ``index`` (legal or not)."""
        self._check_position(index)
        return list(self._live[index])

    def live_nbytes(self) -> list[int]:
        """Bytes of activations alive after each position (the last: the model output)."""
        per = [sum(self._value_nbytes(v) for v in live) for live in self._live]
        per.append(sum(self._value_nbytes(v) for v in self.output_leaves))
        return per

    def input_nbytes(self) -> int:
        return sum(self._value_nbytes(p) for p in self.placeholders)

    def output_nbytes(self) -> int:
        return sum(self._value_nbytes(v) for v in self.output_leaves)

    def cut(self, index: int) -> Cut:
        """The legal cut after position ``index``. Raises CutError naming the valid range."""
        self._check_position(index)
        for c in self._cuts:
            if c.index == index:
                return c
        live = self._live[index]
        bad = [_describe_blocker(v) for v in live if not _info(v).crossable]
        raise CutError(
            f"cannot cut after node {index} ({self.nodes[index].name}): "
            + ("; ".join(bad) if bad else "nothing crosses"),
            "run 'paretopipe cuts MODEL' to list the legal cuts",
        )

    def blockers(self) -> list[tuple[str, int, int]]:
        """Why positions are not legal cuts: (what cannot cross and which node made it, first
        position, last position) for every value that cannot cross, in order."""
        spans: dict[fx.Node, list[int]] = {}
        for i, live in enumerate(self._live):
            for v in live:
                if not _info(v).crossable:
                    spans.setdefault(v, [i, i])[1] = i
        return [(_describe_blocker(v), a, b) for v, (a, b) in spans.items()]

    def run_model(self, inputs: Sequence[torch.Tensor]) -> object:
        """The unsplit model's output on ``inputs`` (given in placeholder order)."""
        names = [str(p.target) for p in self.placeholders]
        with torch.no_grad():
            if len(names) == len(inputs) and all(n.isidentifier() for n in names):
                return self.model(**dict(zip(names, inputs)))
            return self.model(*inputs)

    def _check_position(self, index: int) -> None:
        top = len(self.fx_nodes) - 2
        if not isinstance(index, int) or not 0 <= index <= top:
            raise CutError(f"cut index {index!r} is out of range", f"valid cut indices are 0..{top}")

    def check_cuts(self, cut_indices: Sequence[int]) -> list[Cut]:
        """Validate K-1 cut indices: in range, strictly increasing, legal. Returns the cuts."""
        indices = list(cut_indices)
        for a, b in zip(indices, indices[1:]):
            if not a < b:
                raise CutError(f"cut indices must be strictly increasing, got {indices}")
        return [self.cut(i) for i in indices]

    def __repr__(self) -> str:
        return f"ModelGraph({type(self.model).__name__}, {len(self.nodes)} nodes, {len(self._cuts)} legal cuts)"


def _fetch_attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def trace(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    leaf_modules: Iterable[str] = (),
    *,
    method: TraceMethod = "fx",
    input_names: Sequence[str] | None = None,
    autowrap_functions: Iterable[object] = (),
    extra_leaf_modules: Iterable[str] = (),
) -> ModelGraph:
    """Trace ``model`` and run ``example_input`` through it to size and classify every value.

    ``method`` is ``fx`` (torch.fx symbolic tracing; ``leaf_modules`` names modules, by qualified
    or class name, kept as single nodes; ``autowrap_functions`` are recorded as single calls) or
    ``export`` (``torch.export``, non-strict; the inputs are passed by ``input_names``).
    ``extra_leaf_modules`` are leaves a model source adds (not recorded in the spec).
    Returns a :class:`ModelGraph`. Raises ModelError naming the module that could not be traced.
    """
    model = model.eval()
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    with _TRACE_LOCK:
        if method == "export":
            gm = _export(model, inputs, input_names)
        else:
            gm = _fx(model, [*leaf_modules, *extra_leaf_modules], autowrap_functions)
            _bind_defaults(gm, len(inputs))
        _check_input_order(model, gm, input_names)
        try:
            with torch.no_grad():
                _Recorder(gm).run(*inputs, enable_io_processing=False)
        except Exception as exc:
            raise ModelError(
                f"{type(model).__name__} fails on inputs of shape {[tuple(t.shape) for t in inputs]}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "check --input-shape / --input",
            ) from None
    return ModelGraph(model, gm, batch_size=int(inputs[0].shape[0]) if inputs[0].dim() else 1)


def _fx(model: nn.Module, leaf_modules: Iterable[str], autowrap_functions: Iterable[object]) -> fx.GraphModule:
    tracer = _Tracer(leaf_modules, autowrap_functions)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError... from user code
        raise _trace_error(model, exc) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _export(model: nn.Module, inputs: Sequence[torch.Tensor], input_names: Sequence[str] | None) -> fx.GraphModule:
    kwargs = dict(zip(input_names, inputs)) if input_names else {}
    args = () if input_names else tuple(inputs)
    try:
        with torch.no_grad():
            program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # export raises many types from user code
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"torch.export cannot trace {type(model).__name__}: {reason}") from None
    gm = program.module()
    if not isinstance(gm, fx.GraphModule):
        raise ModelError(f"torch.export gave a {type(gm).__name__} for {type(model).__name__}, not a GraphModule")
    return gm


def _bind_defaults(gm: fx.GraphModule, n_inputs: int) -> None:
    """Replace the placeholders of forward() parameters beyond the given inputs by their default
    values (``attn_mask=None``), so a stage never waits for an input nobody sends."""
    for p in [n for n in gm.graph.nodes if n.op == "placeholder"][n_inputs:]:
        if not p.args:
            raise ModelError(
                f"{type(gm).__name__}.forward() needs input {p.target!r}, which was not given", "add --input"
            )
        bind = functools.partial(_replace, p, p.args[0])
        for user in list(p.users):
            user.args = fx.node.map_aggregate(user.args, bind)  # type: ignore[arg-type]
            user.kwargs = fx.node.map_aggregate(user.kwargs, bind)  # type: ignore[arg-type]
        gm.graph.erase_node(p)
    gm.recompile()


def _replace(node: fx.Node, value: object, arg: object) -> object:
    return value if arg is node else arg


def _check_input_order(model: nn.Module, gm: fx.GraphModule, input_names: Sequence[str] | None) -> None:
    if not input_names:
        return
    names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    if names[: len(input_names)] != list(input_names):
        raise ModelError(
            f"{type(model).__name__} takes inputs {names}, but --input gives {list(input_names)}",
            "give one --input per input, in the order of the model's forward() parameters",
        )


def _describe_blocker(v: fx.Node) -> str:
    info = _info(v)
    return f"the {info.kind} made by node {v.name!r} cannot cross ({info.reason})"


def trace_spec(spec: ModelSpec, batch_size: int = 1) -> ModelGraph:
    """Build the model of ``spec`` and trace it on random inputs of ``batch_size`` items."""
    from paretopipe.model.registry import build_model, example_inputs, trace_options

    return trace(build_model(spec), example_inputs(spec, batch_size), spec.leaf_modules, **trace_options(spec))
