"""The command-line tools: one module per command, all thin over the library.

Every command builds its parser with :func:`ssd_deploy.cli.common.parser`, uses the shared flag
groups there, and runs through :func:`ssd_deploy.cli.common.run`, which owns the exit-code policy
(0 ok, 1 check failed, 2 bad input, 130 interrupted) and the one-line error printer.
"""
