"""The ``bpnp`` command: ``fit | validate | test | predict`` (LightningCLI), ``predict`` on one's own
files (with ``--points2d`` or ``--problems``), ``evaluate`` and ``visualise`` (pose-accuracy tables
and pictures), ``example`` (one synthetic problem written as ``predict``'s input files).

A user mistake that surfaces as ``FileNotFoundError`` or ``ValueError`` (a missing file or folder,
a bad source, a malformed input) prints one line naming it and exits with status 2; ``--debug``
shows the traceback instead. Option and config errors are jsonargparse's, also status 2.
"""

from __future__ import annotations

import sys


def _dispatch(command: str, argv: list[str]) -> None:
    if command == "predict" and any(
        a.split("=")[0] in ("--points2d", "--problems", "--colmap") for a in argv[1:]
    ):
        from bpnp.cli.predict import predict_main

        predict_main(argv[1:])
    elif command == "example":
        from bpnp.cli.example import example_main

        example_main(argv[1:])
    elif command == "evaluate":
        from bpnp.cli.evaluate import evaluate_main

        evaluate_main(argv[1:])
    elif command in ("visualise", "visualize"):
        from bpnp.cli.visualise import visualise_main

        visualise_main(argv[1:])
    else:
        from bpnp.cli.train import cli_main

        cli_main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    debug = "--debug" in argv
    if debug and command != "predict":  # predict has the flag itself
        argv.remove("--debug")
    try:
        _dispatch(command, argv)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        if debug:
            raise
        print(f"bpnp {command or 'fit'}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
