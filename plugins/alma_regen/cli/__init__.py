"""The `alma-regen` command: every step an operator runs, by hand.

Each subcommand calls the same library function the Airflow operator calls.
A user error prints one line on stderr and exits non-zero, no traceback.
Command modules import their library module lazily so `alma-regen --help` stays fast.

    common.py        JSON output, the member folder's checks and MOUS lock, --timeout, --casa-version
    calibration.py   inspect, casa-versions (add-pipeline), restore
    staging.py       stage
    products.py      image, publish
    workspace.py     clean, raw-cache
    run.py           run (the whole chain without Airflow)

Other installed distributions add subcommands through the entry-point group
`alma_regen.commands` (the developer tools of devtools/: synth, serve-archive,
demo): each entry point, named after its command, is a function taking the
subparsers object. Without them `alma-regen --help` simply lacks those commands.
"""
import argparse
import logging
import sys

from ..errors import AlmaRegenError

COMMANDS_GROUP = "alma_regen.commands"


def _product_modules():
    from . import calibration, products, run, staging, workspace
    return (calibration, staging, products, workspace, run)


def _add_extra_commands(sub) -> None:
    """The subcommands other installed distributions declare (group `alma_regen.commands`).
    A product command is never replaced; a command that cannot load is left out, said on stderr."""
    from importlib.metadata import entry_points
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # noqa: BLE001 - a broken add-on must not take the product's commands down
            print(f"alma-regen: command {ep.name} ({ep.value}) left out: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser; given the arguments, the add-on commands are looked up only when they do not
    name a product command (the entry-point scan costs a tenth of a second on every run)."""
    p = argparse.ArgumentParser(prog="alma-regen", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _product_modules():
        module.register(sub)
    command = next((a for a in argv or [] if not a.startswith("-")), None) if argv is not None else None
    if command not in sub.choices or any(a in ("-h", "--help") for a in argv[:argv.index(command)]):
        _add_extra_commands(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    try:
        return args.func(args) or 0
    except AlmaRegenError as exc:
        print(f"alma-regen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `alma-regen inspect --json | head`: the reader left, nothing is wrong.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"alma-regen {args.command}: interrupted", file=sys.stderr)
        return 130
