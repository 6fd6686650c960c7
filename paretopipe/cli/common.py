"""Options shared by the commands that take a model, and the one function that loads it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from paretopipe.model.registry import ModelSpec

ModelArg = typer.Argument(
    ...,
    help="A torchvision model name, timm:NAME, hf:NAME[:key=value,...] (see 'paretopipe models') "
    "or package.module:factory.",
)
InputShapeOption = typer.Option(
    None, "--input-shape", help="Input shape without batch, e.g. 3x224x224 [default: the model's]."
)
InputOption = typer.Option(
    None,
    "--input",
    help="A model input NAME:SHAPE[:DTYPE[:LOW-HIGH]], first dimension the batch at 1, "
    "e.g. input_ids:1x128:int64:0-30521; repeatable, in forward() order.",
)
WeightsOption = typer.Option(None, "--weights", help="A checkpoint (state dict) to load; random weights otherwise.")
LeafOption = typer.Option(None, "--leaf", help="Keep this module (qualified or class name) as one node; repeatable.")
SeedOption = typer.Option(0, "--seed", help="Seed of the random weights.")


def model_spec(
    model: str,
    input_shape: str | None = None,
    weights: Path | None = None,
    leaf: list[str] | None = None,
    seed: int = 0,
    inputs: list[str] | None = None,
) -> ModelSpec:
    """Resolve the shared model options into a ModelSpec (raises ParetoPipeError on bad input)."""
    from paretopipe.model.inputs import parse_input
    from paretopipe.model.registry import parse_input_shape, resolve_spec

    shape = parse_input_shape(input_shape) if input_shape else None
    described = tuple(parse_input(text) for text in inputs or ())
    return resolve_spec(
        model, input_shape=shape, weights=weights, seed=seed, leaf_modules=tuple(leaf or ()), inputs=described
    )
