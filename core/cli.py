"""The command line: ``python -m core <command> ...``.

Commands live in the modules that implement them; each module defines ``add_arguments(parser)`` and
``main(args) -> int``. They are imported only when their command runs, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.errors import DeltaAtlasError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("core.engine.cli", "compute the Delta Activations of every model in a catalog"),
    "catalog": ("core.pool.hub_catalog", "write a catalog of a base model's adapters and finetunes on the Hugging Face Hub"),
    "prepare-base": ("core.engine.bases", "make a built-in base model ready (one-time conversion into the cache)"),
    "build-demo": ("core.zoo.demo_build", "train the built-in demo zoo from the datasets folder"),
    "report": ("core.map.report", "measure a pool: clustering against baselines, additivity, robustness"),
    "map": ("core.map.projection", "project a vector file to 2-D and cluster it"),
    "describe": ("core.map.describe", "say what each model learned: its answers to the probes and the words it leans towards"),
    "find": ("core.reuse.task", "find the models that fit a task, from a few examples"),
    "merge": ("core.reuse.merge", "merge adapters for a task and evaluate the result"),
    "references": ("core.reuse.reference_build", "train the everyday reference tasks that tell 'nothing fits' apart"),
    "fingerprints": ("core.zoo.fingerprint_build", "read a sample of the pool's training examples with the base, for "
                     "'nothing fits'"),
}


class Parser(argparse.ArgumentParser):
    """argparse with one more hint: a value that starts with '-' (a negative number) is read as an option."""

    def error(self, message: str):
        if "expected one argument" in message:
            option = message.split(":")[0].replace("argument ", "").split("/")[-1].strip()
            message += (f" (a value that starts with '-', such as a negative number, must be joined to its option: "
                        f"write {option}=-3, not {option} -3)")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m core", description="Delta Atlas: map, search and merge finetuned LLMs "
                                     "by their Delta Activations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        command.set_defaults(_module=module)
        if _wants_help_for(name):
            importlib.import_module(module).add_arguments(command)
    return parser


def _wants_help_for(name: str) -> bool:
    """Only import the module of the command that runs (or whose help is shown)."""
    argv = sys.argv[1:]
    positional = [a for a in argv if not a.startswith("-")]
    return bool(positional) and positional[0] == name


def describe_after_embed(args: argparse.Namespace) -> int:
    """``embed --describe``: describe the models of the vector file just written (core.map.describe)."""
    from core.map.describe import descriptions_path, update_descriptions
    from core.pool.catalog import read_catalog
    from core.pool.vectors import read_vectors
    from core.progress import TextBar

    if not args.out.is_file():                       # nothing was embedded: nothing to describe
        return 0
    catalog = read_catalog(args.catalog)
    found = update_descriptions(catalog, read_vectors(args.out), device=args.device, progress=TextBar(stream=sys.stderr))
    print(f"{len(found['models'])} models described -> {descriptions_path(catalog.path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        status = int(importlib.import_module(args._module).main(args) or 0)
        if getattr(args, "describe", False) and status in (0, 1):     # embed --describe: models embedded, now described
            status = max(status, describe_after_embed(args))
        return status
    except DeltaAtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
