"""Subcommands of the `lorafile` CLI, one module each (see lorafile/cli.py)."""
