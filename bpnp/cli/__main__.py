"""``python -m bpnp.cli``: the ``bpnp`` command."""

from bpnp.cli import main

main()
