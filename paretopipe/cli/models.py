"""``paretopipe models`` and ``paretopipe cuts``: what can be split, and where."""

from __future__ import annotations

from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.common import (
    InputOption,
    InputShapeOption,
    LeafOption,
    ModelArg,
    SeedOption,
    WeightsOption,
    model_spec,
)
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.errors import UsageError


@app.command("models")
def models_command(
    source: str = typer.Option(
        "torchvision", "--source", "-s", help="torchvision, timm or hf (the last two need the models extra)."
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """List the models paretopipe knows by name, with parameters and default input shape.

    timm models are used as timm:NAME, Hugging Face ones as hf:NAME[:key=value,...].
    Example: paretopipe models --source timm --format csv
    """
    if source == "torchvision":
        from paretopipe.model.registry import list_models

        rows = [
            {"model": m.name, "params": m.num_params, "input_shape": "x".join(map(str, m.input_shape))}
            for m in list_models()
        ]
        render(rows, fmt)
    elif source == "timm":
        from paretopipe.model.sources import timm_names

        render([{"model": f"timm:{n}"} for n in timm_names()], fmt, ["model"])
    elif source == "hf":
        from paretopipe.model.sources import hf_names

        rows = [{"model": f"hf:{n}", "config": c, "builds": m} for n, (c, m) in hf_names().items()]
        render(rows, fmt, ["model", "config", "builds"])
    else:
        raise UsageError(f"unknown model source {source!r}", "use torchvision, timm or hf")


@app.command("cuts")
def cuts_command(
    model: str = ModelArg,
    granularity: str = typer.Option(
        "node",
        "--granularity",
        "-g",
        help="node: every legal position; block: boundaries of top-level blocks where one tensor crosses.",
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Items per batch (bytes scale with it)."),
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
    verify: bool = typer.Option(
        False,
        "--verify",
        help=(
            "Split at every listed cut (and a few random 3- and 4-stage sets) and check the chained output "
            "equals the model's, bit for bit; name what makes other positions illegal."
        ),
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """List the legal cuts of a model: where it can be split and what crosses each cut.

    A cut after node i carries every tensor produced at or before i and used after it (skip
    connections included). Example: paretopipe cuts resnet18 --granularity block --verify
    """
    if granularity not in ("node", "block"):
        raise UsageError(f"unknown granularity {granularity!r}", "use node or block")
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import example_inputs

    spec = model_spec(model, input_shape, weights, leaf, seed, inputs)
    graph = trace_spec(spec, batch_size)
    cuts = graph.cuts_at(granularity)  # type: ignore[arg-type]
    rows = [
        {
            "cut": c.index,
            "after": c.after,
            "block": graph.nodes[c.index].block,
            "tensors": len(c.tensors),
            "crossing": list(c.tensors),
            "bytes": c.nbytes,
            "params_before": c.params_before,
        }
        for c in cuts
    ]
    columns = ["cut", "after", "block", "tensors", "crossing", "bytes", "params_before"]
    failures = 0
    if verify:
        failures = _verify(graph, [c.index for c in cuts], example_inputs(spec, batch_size), rows)
        columns += ["exact", "max_abs_diff"]
    described = " ".join(map(str, spec.inputs)) if spec.inputs else "x".join(map(str, spec.input_shape))
    title = f"{spec.name}: {len(cuts)} {granularity} cuts of {len(graph.nodes)} nodes, batch {batch_size}, "
    title += f"input {described}"
    render(rows, fmt, columns, title=title)
    if failures:
        raise typer.Exit(1)


def _verify(graph, cut_indices: list[int], inputs, rows: list[dict]) -> int:
    """Verify each single cut and a few multi-stage sets; fill rows; return the failure count."""
    from paretopipe.model.stages import (
        assemble_output,
        compare_outputs,
        run_chain,
        split_stages,
        verification_cut_sets,
    )

    expected = graph.run_model([t.clone() for t in inputs])
    sets = verification_cut_sets(cut_indices)
    by_cut = {r["cut"]: r for r in rows}
    failures = 0
    from paretopipe.cli.output import iter_progress

    for cut_set in iter_progress(sets, f"verifying {len(sets)} cut sets"):
        leaves = run_chain(split_stages(graph, cut_set), *(t.clone() for t in inputs))
        exact, diff = compare_outputs(expected, assemble_output(graph, leaves))
        failures += not exact
        if len(cut_set) == 1:
            by_cut[cut_set[0]].update(exact=exact, max_abs_diff=diff)
        elif not exact:
            err_console.print(f"cuts {list(cut_set)}: NOT exact, max abs difference {diff:.3g}")
    for what, first, last in graph.blockers():
        err_console.print(f"not a cut after nodes {first}..{last}: {what}")
    multi = len(sets) - len(cut_indices)
    verdict = "exact" if not failures else f"{failures} NOT exact"
    err_console.print(f"verified {len(cut_indices)} single cuts and {multi} multi-stage cut sets: {verdict}")
    return failures
