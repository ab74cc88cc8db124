"""The ``concerto`` command-line tool.

Each subcommand lives in its own module of this package and exposes two functions:

* ``register(subparsers)`` adds an ``argparse`` sub-parser (with ``--help`` text that
  states units) and sets ``func`` on it via ``set_defaults(func=run)``;
* ``run(args) -> int`` does the work and returns the process exit code.

Modules are imported lazily by name so that ``concerto --help`` stays fast and a
subcommand's heavy imports (torch, rclpy) are only paid when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand name -> module (relative to this package) that implements it
SUBCOMMANDS = {
    "demo": "demo",
    "convert": "convert",
    "replay": "replay",
    "encode": "encode",
    "export": "export",
    "query": "query",
    "train": "train",
    "info": "info",
    "bundle": "bundle",
    "eval": "eval",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="concerto",
        description=(
            "concerto_ros tools: run the perception pipeline on recordings, convert "
            "datasets to rosbag2, run the Concerto encoder, and start the demo."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module in SUBCOMMANDS.items():
        mod = importlib.import_module(f"{__name__}.{module}")
        mod.register(subparsers)
    _plain_help(parser)
    return parser


def walk_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-parser below it (depth first), e.g. ``concerto train probe``."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from walk_parsers(sub)


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Descriptions and option help of every (sub-)parser as plain text (no reST markup:
    they are module docstrings that also feed the API documentation)."""
    from concerto_ros.cli.helptext import plain

    for p in walk_parsers(parser):
        p.description = plain(p.description) if p.description else p.description
        p.epilog = plain(p.epilog) if p.epilog else p.epilog
        for action in p._actions + [c for a in p._actions for c in getattr(a, "_choices_actions", [])]:
            if isinstance(action.help, str):
                action.help = plain(action.help)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``concerto`` console script.

    A recording that cannot be read or a missing file ends the command with one line on
    stderr and exit code 2 (no traceback).
    """
    from concerto_ros.recordings.errors import RecordingError

    from concerto_ros.models.allocator import cap_heap_arenas

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cap_heap_arenas()  # before any thread starts (concerto_ros.models.allocator says why)
    except ValueError as exc:
        print(f"concerto {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (RecordingError, FileNotFoundError) as exc:
        print(f"concerto {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
