"""Export a trained generator: `python scripts/export.py --checkpoint CKPT --out DIR`.

CKPT: a run folder (its newest complete checkpoint), a checkpoint folder
(runs/NAME/checkpoints/step-N) or its state.pt. Writes DIR/generator.safetensors (dense),
DIR/generator.compact.safetensors (sparse tensors as values + bitmap: a pruned
generator's small file) and DIR/config.json; the last stdout line is one JSON object
with dense_bytes, compact_bytes, compact_ratio, sparsity, overall_sparsity, ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distcolor.errors import run_main
from distcolor.paths import existing_path, output_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="run folder, checkpoint folder or state.pt"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--weights",
        choices=["ema", "live"],
        default="ema",
        help="the generator's average when the run kept one (default), or its live weights",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing exports")
    args = parser.parse_args()
    existing_path(args.checkpoint, "--checkpoint")
    output_folder(args.out, "--out")
    from distcolor.infer.export import export_generator  # torch only once the arguments are fine

    result = export_generator(
        args.checkpoint, args.out, weights=args.weights, overwrite=args.overwrite
    )
    if "note" in result:
        print(f"note: {result['note']}")
    rounds = result["pruning_rounds"]
    print(
        f"exported the {result['weights']} generator of step {result['step']} from "
        f"{result['checkpoint']}: {result['parameters']:,} parameters, conv weights "
        f"{result['sparsity']:.1%} zero" + (f" ({rounds} pruning rounds)" if rounds else "")
    )
    print(
        f"dense {result['dense_bytes'] / 1e6:.1f} MB, compact {result['compact_bytes'] / 1e6:.1f}"
        f" MB ({result['compact_ratio']:.1%} of dense) -> {args.out}"
    )
    print(json.dumps(result))


def entry() -> None:
    """`distcolor-export` (and scripts/export.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
