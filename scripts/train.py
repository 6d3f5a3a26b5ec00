"""Train, validate, test or predict: ``python scripts/train.py fit --config configs/synthetic.yaml``
(the same command line as ``bpnp fit ...``)."""

from bpnp.cli.train import cli_main

if __name__ == "__main__":
    cli_main()
