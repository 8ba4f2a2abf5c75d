"""`orthoserve adapters ...`: create, import, inspect and validate adapter sets."""

import typer

app = typer.Typer(help="Create, import, inspect and validate adapter sets.", no_args_is_help=True)
