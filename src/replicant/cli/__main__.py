"""``python -m replicant.cli``."""

from replicant.cli import main

main()
