"""Thin CLI: each subcommand lives in ``layerprobe/commands/<name>.py`` and calls one library function.

A command module defines ``HELP`` (one line), ``EXAMPLE`` (shown in --help), ``add_arguments(parser)``
and ``run(args) -> int``; it imports torch only inside ``run``. The four stage commands (cpt, merge, sft, eval)
are one table in ``layerprobe/commands/stage.py``.

Imports: every import of the package's own modules is at the top of its file, except where that module would load a
heavy third-party package (torch, transformers, pandas, pyarrow, matplotlib, scipy, ...) that the importing module
does not load itself. Those few stay inside the function that needs them, so ``layerprobe --help`` starts fast and
plotting and reports never load torch (tests/test_plot_records.py, tests/test_report.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from layerprobe.commands.stage import STAGES, command
from layerprobe.core.config import wait_passively

COMMANDS = ("train", "cpt", "merge", "sft", "eval", "plot", "diff", "relate", "predict", "attribute", "sweep", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerprobe",
        description="See, layer by layer, what fine-tuning does to a language model.",
        epilog="example:\n  layerprobe train --record        # CPT -> merge -> SFT -> eval on the built-in toy world",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name in COMMANDS:
        mod = command(name) if name in STAGES else importlib.import_module(f"layerprobe.commands.{name}")
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog="example:\n  " + mod.EXAMPLE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    wait_passively()  # before torch loads (the commands load it inside run)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError, OSError) as e:
        if os.environ.get("LAYERPROBE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"layerprobe {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerprobe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
