"""Which models can be split, and exactly: torchvision, timm and Hugging Face models.

Run: ``python benchmarks/bench_models.py`` (options: ``--only SUBSTRING``, ``--splits N``,
``--seed``, ``--out FILE``). For each model it traces the graph at batch 1 and prints the
number of nodes, legal node cuts, block cuts, the share of positions that are legal cuts, and
whether every stage chain of ``--splits`` random 2-, 3- and 4-stage splits reproduces the
unsplit model bit for bit (``torch.equal`` on every output leaf). A model that does not trace is
listed with the reason. Prints a Markdown table; ``--out`` also writes it to a file.

Inputs are kept small (64x64 images for most classifiers, 224x224 for segmentation, 8-frame
112x112 clips for most video models, 16x224x224 for s3d and mvit_v2_s, tiny configs for
transformers) so the whole table takes minutes.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.errors import ParetoPipeError
from paretopipe.model.graph import ModelGraph, trace, trace_spec
from paretopipe.model.inputs import parse_input
from paretopipe.model.registry import example_inputs, resolve_spec
from paretopipe.model.stages import assemble_output, compare_outputs, run_chain, split_stages

TINY = "num_hidden_layers=2,hidden_size=64,num_attention_heads=2,intermediate_size=128"

# (name, --input-shape or None, [--input ...])
NAMED: list[tuple[str, tuple[int, ...] | None, list[str]]] = [
    # torchvision classification
    *[
        (n, (3, 64, 64), [])
        for n in (
            "alexnet",
            "vgg11",
            "resnet18",
            "resnet50",
            "resnext50_32x4d",
            "wide_resnet50_2",
            "densenet121",
            "googlenet",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "mnasnet0_5",
            "shufflenet_v2_x1_0",
            "squeezenet1_0",
            "efficientnet_b0",
            "efficientnet_v2_s",
            "regnet_y_400mf",
            "convnext_tiny",
            "swin_t",
        )
    ],
    ("inception_v3", (3, 75, 75), []),
    ("vit_b_16", (3, 224, 224), []),
    ("maxvit_t", (3, 224, 224), []),
    # torchvision segmentation
    *[
        (n, (3, 224, 224), [])
        for n in (
            "fcn_resnet50",
            "fcn_resnet101",
            "deeplabv3_resnet50",
            "deeplabv3_resnet101",
            "deeplabv3_mobilenet_v3_large",
            "lraspp_mobilenet_v3_large",
        )
    ],
    # torchvision video
    *[(n, (3, 8, 112, 112), []) for n in ("r3d_18", "mc3_18", "r2plus1d_18")],
    ("s3d", (3, 16, 224, 224), []),
    ("mvit_v2_s", (3, 16, 224, 224), []),
    # timm
    *[
        (f"timm:{n}", None, [])
        for n in (
            "resnet18",
            "mobilenetv3_small_100",
            "efficientnet_b0",
            "ghostnet_100",
            "regnetx_002",
            "convnext_atto",
            "vit_tiny_patch16_224",
            "deit_tiny_patch16_224",
            "mobilevit_xxs",
            "levit_128s",
            "edgenext_xx_small",
            "swin_tiny_patch4_window7_224",
        )
    ],
    # Hugging Face transformers (tiny configs, random weights)
    (f"hf:bert:{TINY}", None, []),
    ("hf:distilbert:n_layers=2,dim=64,n_heads=2,hidden_dim=128", None, []),
    (f"hf:roberta:{TINY}", None, []),
    (f"hf:electra:{TINY},embedding_size=64", None, []),
    (f"hf:albert:{TINY},embedding_size=32", None, []),
    ("hf:GPT2LMHeadModel:n_layer=2,n_embd=64,n_head=2", None, ["input_ids:1x64:int64:0-50256"]),
    (f"hf:vit:{TINY},image_size=64,patch_size=16", None, []),
    (f"hf:BertForSequenceClassification:{TINY}", None, []),
]


def _detection_backbone(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
        return model.backbone

    return build


def _whole(module: str, name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        return getattr(getattr(torchvision.models, module), name)(
            weights=None, **({"weights_backbone": None} if module == "detection" else {})
        )

    return build


# (label, builder, inputs) for models that are not registry names
BUILT: list[tuple[str, Callable[[], torch.nn.Module], tuple[torch.Tensor, ...]]] = [
    (
        "fasterrcnn_mobilenet_v3_large_fpn.backbone",
        _detection_backbone("fasterrcnn_mobilenet_v3_large_fpn"),
        (torch.randn(1, 3, 224, 224),),
    ),
    ("retinanet_resnet50_fpn.backbone", _detection_backbone("retinanet_resnet50_fpn"), (torch.randn(1, 3, 224, 224),)),
    (
        "fasterrcnn_mobilenet_v3_large_fpn",
        _whole("detection", "fasterrcnn_mobilenet_v3_large_fpn"),
        (torch.randn(1, 3, 224, 224),),
    ),
    ("raft_small", _whole("optical_flow", "raft_small"), (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))),
]


def check_chains(
    graph: ModelGraph, inputs: tuple[torch.Tensor, ...], splits: int, rng: random.Random
) -> tuple[int, int]:
    """(exact chains, chains tried) over ``splits`` random 2-, 3- and 4-stage splits each."""
    expected = graph.run_model([t.clone() for t in inputs])
    cuts = [c.index for c in graph.cuts]
    exact = tried = 0
    for stages in (2, 3, 4):
        if len(cuts) < stages - 1:
            continue
        for _ in range(splits):
            chosen = sorted(rng.sample(cuts, stages - 1))
            leaves = run_chain(split_stages(graph, chosen), *(t.clone() for t in inputs))
            exact += compare_outputs(expected, assemble_output(graph, leaves))[0]
            tried += 1
    return exact, tried


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("|", "/")[:140]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="Only models whose name contains this.")
    parser.add_argument("--splits", type=int, default=3, help="Random splits per stage count (2, 3, 4).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the table to this file.")
    results_file.add_save_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rng = random.Random(args.seed)

    jobs: list[tuple[str, Callable[[], tuple[ModelGraph, tuple[torch.Tensor, ...]]]]] = []
    for name, shape, inputs in NAMED:

        def job(name=name, shape=shape, inputs=inputs):
            spec = resolve_spec(name, input_shape=shape, inputs=tuple(parse_input(i) for i in inputs))
            return trace_spec(spec), example_inputs(spec)

        jobs.append((name, job))
    for label, build, tensors in BUILT:
        jobs.append((label, lambda build=build, tensors=tensors: (trace(build(), tensors), tensors)))

    lines = [
        f"torch {torch.__version__}, python {platform.python_version()}, {args.splits} random splits per "
        f"stage count, seed {args.seed}",
        "",
        "| model | nodes | legal node cuts | block cuts | legal share | exact chains | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for label, job in jobs:
        if args.only and args.only not in label:
            continue
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            graph, inputs = job()
            n, legal, blocks = len(graph.nodes), len(graph.cuts), len(graph.cuts_at("block"))
            exact, tried = check_chains(graph, inputs, args.splits, rng)
            blockers = graph.blockers()
            note = f"not a cut: {blockers[0][0]}"[:140] if blockers else ""
            row = f"| {label} | {n} | {legal} | {blocks} | {legal / n:.0%} | {exact}/{tried} | {note} |"
        except (ParetoPipeError, Exception) as exc:  # a model that does not trace is listed with why
            row = f"| {label} | | | | | | does not trace: {_reason(exc)} |"
        print(row, flush=True)
        print(f"  {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        lines.append(row)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    results_file.run("models", main)
