"""Options shared by several commands (kept free of heavy imports: every parser is built at start-up)."""

from __future__ import annotations


def add_format_argument(parser) -> None:
    """``--format``: the extra formats every figure of the command is written in (see plot.style.figure_formats)."""
    parser.add_argument(
        "--format",
        metavar="LIST",
        default=None,
        help="also write each figure as svg and/or pdf (comma-separated, e.g. svg,pdf); PNG always",
    )
