"""The `lorafile` console script. The commands and their dispatcher live in
`lorafile.commands` (one module per command); this module is the installed entry point."""

from __future__ import annotations

import sys

from lorafile.commands import COMMAND_ORDER, build_parser, command_modules, main

__all__ = ["COMMAND_ORDER", "build_parser", "command_modules", "main"]

if __name__ == "__main__":
    sys.exit(main())
