"""Command line: ``python -m inprocserve inspect MODEL``, ``validate REPOSITORY`` and ``quantize SRC DST``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ._config import ModelConfig, PoolConfig, WarmupConfig, load_model_config
from ._errors import InprocserveError
from ._model import ModelVersion
from ._repository import MODEL_FILENAME, scan_repository

__all__ = ["main"]


def _noop_deliver(request: object) -> None:  # the CLI never submits requests
    pass


def _load(name: str, version: int, path: Path, config: ModelConfig) -> ModelVersion:
    model = ModelVersion(name, version, path, config, deliver=_noop_deliver)
    model.load()
    return model


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if path.is_dir():
        path = path / MODEL_FILENAME
    config = ModelConfig(pool=PoolConfig(size=1, intra_op_threads=1), warmup=WarmupConfig(enabled=False))
    try:
        model = _load(path.parent.parent.name or "model", 1, path, config)
    except InprocserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        assert model.signature is not None
        info = {"path": str(path), "bytes": path.stat().st_size, "providers": model.providers}
        info.update(model.signature.to_dict())
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"{path} ({info['bytes']:,} bytes)")
        print("inputs:")
        for spec in model.signature.inputs:
            print(f"  {spec.describe()}")
        print("outputs:")
        for spec in model.signature.outputs:
            print(f"  {spec.describe()}")
        batch = "yes (dynamic axis 0 on every input and output)" if model.signature.batchable else "no (runs unbatched)"
        print(f"batchable: {batch}")
        return 0
    finally:
        model.retire()


def _validate(args: argparse.Namespace) -> int:
    repository = Path(args.repository)
    try:
        scan = scan_repository(repository)
    except InprocserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = list(scan.problems)
    for problem in scan.problems:
        print(f"PROBLEM {problem}")
    for name, source in scan.models.items():
        try:
            config = load_model_config(source.config_path) if source.config_path else ModelConfig()
        except InprocserveError as exc:
            print(f"FAIL    {name}: {exc}")
            failures.append(str(exc))
            continue
        selected = set(config.version_policy.select(list(source.versions)))
        quiet = config.__class__(
            batching=config.batching,
            pool=PoolConfig(size=1, intra_op_threads=1, providers=config.pool.providers),
            warmup=config.warmup,
            version_policy=config.version_policy,
            nan_policy=config.nan_policy,
        )
        for version, path in sorted(source.versions.items()):
            try:
                model = _load(name, version, path, quiet)
            except InprocserveError as exc:
                print(f"FAIL    {name} v{version}: {exc}")
                failures.append(str(exc))
                continue
            assert model.signature is not None
            served = "served" if version in selected else "not served by the version policy"
            inputs = ", ".join(spec.describe() for spec in model.signature.inputs)
            print(f"OK      {name} v{version} ({served}): {inputs}")
            model.retire()
    print(f"{len(scan.models)} model(s), {len(failures)} problem(s)")
    return 1 if failures else 0


def _quantize(args: argparse.Namespace) -> int:
    from ._quantize import quantize

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs generic advice on the root logger
    try:
        report = quantize(Path(args.source), Path(args.target), sample_rows=args.sample, seconds=args.seconds)
    except InprocserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['source']} -> {report['target']}")
    print(f"size: {report['bytes_before']:,} -> {report['bytes_after']:,} bytes ({report['size_ratio']:.2f}x)")
    for batch, figures in report["speed"].items():
        print(
            f"speed, {batch.replace('_', ' ')}: {figures['before_rows_per_s']:,.0f} -> "
            f"{figures['after_rows_per_s']:,.0f} rows/s ({figures['ratio']:.2f}x)"
        )
    for output, figures in report["accuracy"].items():
        agreement = figures.get("label_agreement")
        extra = f", label agreement {agreement:.1%}" if agreement is not None else ""
        diff = figures["max_abs_diff"]
        print(f"accuracy on {report['sample_rows']} random rows, {output}: max abs diff {diff:.4g}{extra}")
    return 0


def _add_score_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``score MODEL INPUT OUTPUT``: batch scoring of a file (formats: see ``inprocserve._scoring_io``)."""
    from ._scoring_io import run_score

    score = commands.add_parser("score", help="score every row of a .npy/.npz/.csv/.parquet file into another")
    score.add_argument("model", help="a model.onnx file, a version folder holding one, or a model repository")
    score.add_argument("input", help="rows to score: .npy, .npz (one array per input), .csv or .parquet")
    score.add_argument("output", help="where to write the answers: .npy, .npz (one array per output), .csv, .parquet")
    score.add_argument("--name", help="the model to use when MODEL is a repository of several")
    score.add_argument("--version", type=int, help="the version to use (default: the latest servable)")
    score.add_argument("--batch-rows", type=int, help="rows per chunk (default: the model's max_batch_size)")
    score.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    score.set_defaults(run=run_score)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inprocserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print a model's inputs and outputs")
    inspect.add_argument("model", help="a model.onnx file, or a version folder holding one")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(run=_inspect)
    validate = commands.add_parser("validate", help="load every model of a repository and report problems")
    validate.add_argument("repository", help="a folder laid out as <model>/<version>/model.onnx")
    validate.set_defaults(run=_validate)
    quantize = commands.add_parser("quantize", help="dynamic INT8 quantization, with a size/speed/accuracy report")
    quantize.add_argument("source", help="the model.onnx to quantize")
    quantize.add_argument("target", help="where to write the quantized model (.onnx)")
    quantize.add_argument("--sample", type=int, default=256, help="rows of random inputs to compare answers on")
    quantize.add_argument("--seconds", type=float, default=1.0, help="time per speed measurement")
    quantize.add_argument("--json", action="store_true", help="print JSON")
    quantize.set_defaults(run=_quantize)
    _add_score_command(commands)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
