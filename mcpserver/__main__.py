"""Allows `python -m mcpserver`, the same entry point as the console script."""

from mcpserver.cli import main

raise SystemExit(main())
