"""The ``packer`` command line: ``main(argv) -> int``, one module per subcommand.

Each subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Errors packer
expects (:class:`packer.errors.PackerError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from packer import __version__
from packer.cli import pack, report, stats, verify
from packer.errors import PackerError

COMMANDS = [pack, stats, report, verify]
EXIT_ERROR = 2

log = logging.getLogger("packer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="packer",
        description="Offline sequence packing for LLM training: tokenized Arrow/Parquet shards in, "
        "fixed-capacity packed shards with cu_seqlens out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'packer COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"packer {__version__}")
    _add_verbosity(parser, default=False)
    # -q/-v also after the subcommand (`packer pack -q ...`), where users put them; SUPPRESS keeps a flag given
    # before the subcommand from being reset by the subparser's default
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, *, default) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", default=default,
                           help="only warnings (such as data lost) and errors: no progress bar, no summary")
    verbosity.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(level: int) -> None:
    """Log packer's messages to stderr as 'packer: message' (the package logger only; root is left alone)."""
    pkg = logging.getLogger("packer")
    pkg.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in pkg.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("packer: %(message)s"))
        pkg.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose exclude each other")
    # -q keeps the warnings: a run that loses data says so even when asked to be quiet
    _configure_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args._run(args) or 0)
    except PackerError as e:
        print(f"packer: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("packer: interrupted; no output was left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`packer stats DIR | head`): not an error of ours; keep Python from complaining again
        # when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
