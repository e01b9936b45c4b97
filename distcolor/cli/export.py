"""Export a trained generator: `python scripts/export.py --checkpoint CKPT --out DIR [--onnx]`.

CKPT: a run folder (its newest complete checkpoint), a checkpoint folder
(runs/NAME/checkpoints/step-N) or its state.pt. Writes DIR/generator.safetensors (dense),
DIR/generator.compact.safetensors (sparse tensors as values + bitmap: a pruned
generator's small file) and DIR/config.json; --onnx adds DIR/generator.onnx (any ONNX
runtime serves it; needs the `onnx` extra), and with --onnx CKPT may also be an export
(folder or .safetensors file), from which only generator.onnx is written. The last stdout
line is one JSON object with dense_bytes, compact_bytes, compact_ratio, sparsity, ...
and, with --onnx, onnx_bytes, opset, onnx_seconds, parity_max_abs_diff.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distcolor.errors import UserError, run_main
from distcolor.paths import existing_path, output_folder

DEFAULT_OPSET = 18  # infer/onnx_export.py's (not imported: torch only once the arguments are fine)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="run folder, checkpoint folder or state.pt (with --onnx, also an export)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--weights",
        choices=["ema", "live"],
        default="ema",
        help="the generator's average when the run kept one (default), or its live weights",
    )
    parser.add_argument(
        "--onnx", action="store_true", help="also write generator.onnx (the `onnx` extra)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing exports")
    return parser.parse_args()


def _report_safetensors(result: dict, out: Path) -> None:
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
        f" MB ({result['compact_ratio']:.1%} of dense) -> {out}"
    )


def main() -> None:
    args = _parse_arguments()
    existing_path(args.checkpoint, "--checkpoint")
    if args.checkpoint.suffix.lower() == ".onnx":
        raise UserError(
            f"--checkpoint: {args.checkpoint} is an ONNX file, already an export: colour with "
            "it directly (scripts/colorize.py --checkpoint it); export its checkpoint instead"
        )
    output_folder(args.out, "--out")
    # torch only once the arguments are fine
    from distcolor.infer.export import export_generator
    from distcolor.infer.weights import is_export

    result: dict = {}
    if args.onnx:
        from distcolor.infer.onnx_export import check_onnx_target, export_onnx

        # the extra, the opset and the target checked before the safetensors are written
        check_onnx_target(args.out, opset=args.opset, overwrite=args.overwrite)
    if not (args.onnx and is_export(args.checkpoint)):
        result = export_generator(
            args.checkpoint, args.out, weights=args.weights, overwrite=args.overwrite
        )
        _report_safetensors(result, args.out)
    if args.onnx:
        onnx = export_onnx(
            args.checkpoint,
            args.out,
            weights=args.weights,
            opset=args.opset,
            overwrite=args.overwrite,
        )
        print(
            f"onnx {onnx['onnx_bytes'] / 1e6:.1f} MB (opset {onnx['opset']}) in "
            f"{onnx['onnx_seconds']:.1f} s; onnxruntime vs PyTorch max |diff| "
            f"{onnx['parity_max_abs_diff']:.2g} -> {onnx['onnx_file']}"
        )
        result = {**onnx, **result}  # the safetensors export's keys win where both say
        result.setdefault("files", []).append(onnx["onnx_file"])
    print(json.dumps(result))


def entry() -> None:
    """`distcolor-export` (and scripts/export.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
