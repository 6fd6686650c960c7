"""Trace a model with torch.fx into an ordered graph and find every legal cut.

Nodes are kept in the traced (topological) order. A cut after position ``i`` carries the *live
set*: every value produced at or before ``i`` (the model inputs included) and used after it, so
skip connections and concatenations are charged correctly. A cut is legal when every live value
is a tensor (an int taken from ``x.shape`` cannot cross a device boundary).
"""

from __future__ import annotations

import linecache
import threading
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from paretopipe.errors import CutError, ModelError

if TYPE_CHECKING:
    from paretopipe.model.registry import ModelSpec

Granularity = Literal["node", "block"]
_COMPUTE_OPS = ("call_module", "call_function", "call_method")
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
    """A legal cut after node ``index``: the tensors crossing it and their size."""

    index: int
    after: str
    tensors: tuple[str, ...]
    nbytes: int
    params_before: int
    is_block: bool


class _Tracer(fx.Tracer):
    """fx tracer that keeps user-named modules (qualified name or class name) as single nodes."""

    def __init__(self, leaf_modules: Iterable[str] = ()) -> None:
        super().__init__()
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
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
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


def _nbytes(meta: object) -> tuple[int, bool]:
    if isinstance(meta, TensorMetadata):
        numel = 1
        for s in meta.shape:
            numel *= int(s)
        return numel * torch.empty((), dtype=meta.dtype).element_size(), True
    if isinstance(meta, (tuple, list)):
        return sum(_nbytes(m)[0] for m in meta), False
    return 0, False


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
            nbytes, is_tensor = _nbytes(n.meta.get("tensor_meta"))
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
        params_before = 0
        cuts = []
        for i, live in enumerate(self._live):
            params_before += self.nodes[i].num_params
            if not live or not all(self._is_tensor(v) for v in live):
                continue
            nbytes = sum(self._value_nbytes(v) for v in live)
            is_block = len(live) == 1 and self.nodes[i].block != self.nodes[i + 1].block
            cuts.append(Cut(i, self.nodes[i].name, tuple(v.name for v in live), nbytes, params_before, is_block))
        return cuts

    def _is_tensor(self, v: fx.Node) -> bool:
        return isinstance(v.meta.get("tensor_meta"), TensorMetadata)

    def _value_nbytes(self, v: fx.Node) -> int:
        return _nbytes(v.meta.get("tensor_meta"))[0]

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
        bad = [v.name for v in live if not self._is_tensor(v)]
        raise CutError(
            f"cannot cut after node {index} ({self.nodes[index].name}): "
            + (f"non-tensor values {bad} would cross" if bad else "nothing crosses"),
            "run 'paretopipe cuts MODEL' to list the legal cuts",
        )

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
) -> ModelGraph:
    """Trace ``model`` with torch.fx and propagate ``example_input`` to size every value.

    ``leaf_modules`` names modules (qualified name or class name) kept as single nodes.
    Returns a :class:`ModelGraph`. Raises ModelError naming the module that could not be traced.
    """
    model = model.eval()
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    tracer = _Tracer(leaf_modules)
    with _TRACE_LOCK:
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # fx raises TraceError, TypeError, AttributeError... from user code
            raise _trace_error(model, exc) from None
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*inputs)
        except Exception as exc:
            raise ModelError(
                f"{type(model).__name__} fails on an input of shape {[tuple(t.shape) for t in inputs]}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "check --input-shape",
            ) from None
    return ModelGraph(model, gm, batch_size=int(inputs[0].shape[0]) if inputs[0].dim() else 1)


def trace_spec(spec: ModelSpec, batch_size: int = 1) -> ModelGraph:
    """Build the model of ``spec`` and trace it on a random input of ``batch_size`` items."""
    from paretopipe.model.registry import build_model, example_input

    return trace(build_model(spec), example_input(spec, batch_size), leaf_modules=spec.leaf_modules)
