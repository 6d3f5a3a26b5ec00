"""The ``bpnp`` command: ``fit | validate | test | predict`` (LightningCLI), ``predict`` on one's own
files (with ``--points2d`` or ``--problems``), ``evaluate`` and ``visualise`` (pose-accuracy tables
and pictures)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command == "predict" and any(a.split("=")[0] in ("--points2d", "--problems") for a in argv[1:]):
        from bpnp.cli.predict import predict_main

        predict_main(argv[1:])
    elif command == "evaluate":
        from bpnp.cli.evaluate import evaluate_main

        evaluate_main(argv[1:])
    elif command in ("visualise", "visualize"):
        from bpnp.cli.visualise import visualise_main

        visualise_main(argv[1:])
    else:
        from bpnp.cli.train import cli_main

        cli_main(argv)
