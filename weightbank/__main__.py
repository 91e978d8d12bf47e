"""`python -m weightbank` runs the CLI."""

from weightbank.cli.main import main

main()
