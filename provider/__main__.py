"""python -m provider -> the CLI."""

from provider.cli import main

main()
