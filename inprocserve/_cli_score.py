"""``score MODEL INPUT OUTPUT``: batch scoring of a file through ``Server.predict_many``.

The command lives in ``inprocserve._scoring_io`` (its files are read by ``_scoring_readers`` and written by
``_scoring_writer``); this module only adds the subcommand.
"""

from __future__ import annotations

from ._cli_common import Subparsers, add_command, positive_int

__all__ = ["add_score"]


def add_score(commands: Subparsers) -> None:
    from ._scoring_io import run_score

    score = add_command(
        commands,
        "score",
        summary="score every row of a .npy/.npz/.csv/.parquet file into another",
        examples="  python -m inprocserve score models/fraud/2/model.onnx rows.npy answers.npz\n"
        "  python -m inprocserve score --name fraud models/ transactions.csv scores.csv\n"
        "  python -m inprocserve score --batch-rows 256 --quiet model.onnx big.parquet out.parquet\n\n"
        "OUTPUT is replaced only when every row was scored; a failure leaves it untouched.\n",
    )
    score.add_argument("model", help="a model.onnx file, a version folder holding one, or a model repository")
    score.add_argument(
        "input",
        help="rows to score: .npy, .npz (one array per input), .csv or .parquet (a column per input by name, "
        "for a model of several inputs or of text)",
    )
    score.add_argument("output", help="where to write the answers: .npy, .npz (one array per output), .csv, .parquet")
    score.add_argument("--name", help="the model to use when MODEL is a repository of several")
    # positive_int: 0 or -5 is a usage error (exit 2) naming the flag, not (after the model had loaded) exit 1 with
    # the server's "version must be a positive int" or predict_many's "batch_rows must be..."
    score.add_argument("--version", type=positive_int, help="the version to use (default: the latest servable)")
    score.add_argument("--batch-rows", type=positive_int, help="rows per chunk (default: the model's max_batch_size)")
    score.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    score.set_defaults(run=run_score)
