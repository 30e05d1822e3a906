"""The `alma-regen` command: every step an operator runs, by hand.

Each subcommand calls the same library function the Airflow operator calls.
A user error prints one line on stderr and exits non-zero, no traceback.
Subcommands import their module lazily so `alma-regen --help` stays fast.
"""
import argparse
import logging
import sys

from .commands import casa_timeout, casa_version_arg, member_step, print_json
from .errors import AlmaRegenError


def cmd_synth(a):
    from .synth import synthesize
    print_json(synthesize(a.out, ebs=a.ebs, seed=a.seed, antennas=a.antennas, sessions=a.sessions,
                           restore_template=a.restore_template))


def _session_numbers(text):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected session numbers such as 1,1,3, not {text!r}") from None


def cmd_inspect(a):
    from .delivery import Delivery
    plan = Delivery(a.member_dir).plan()
    if a.json:
        print_json(plan)
    else:
        from .delivery import format_plan
        print(format_plan(plan))
    # The plan is printed either way; the exit status says whether it can run.
    return 0 if plan["ok"] else 1


def cmd_casa_versions(a):
    from .casa.registry import load_registry
    registry = load_registry()
    if a.json:
        print_json([c.as_dict() for c in registry.launchers])
    else:
        for c in registry.launchers:
            print(f"{c.version!s:12} {c.kind:8} {c.pipeline or '-':14} {c.executable}  ({c.source})")


def cmd_add_pipeline(a):
    from .casa.pipeline_layer import add_pipeline
    print_json(add_pipeline(a.path, layers=a.layers, registry=a.registry))


def cmd_restore(a):
    from .calibration import Options, calibrate
    version = casa_version_arg(a.casa_version)
    with member_step(a.member_dir, "restore"):
        summary = calibrate(a.member_dir, Options(engine=a.engine, casa_version=version,
                                                  dosplit=a.dosplit, spacesaving=a.spacesaving,
                                                  docontsub=a.docontsub,
                                                  timeout_s=casa_timeout(a.member_dir, a.timeout)),
                            parallel=a.parallel)
    print_json({k: summary[k] for k in ("mous_uid", "plan", "elapsed_s")} |
                {"outputs": [r["output"] for r in summary["ebs"]]})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alma-regen", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="build a synthetic ALMA delivery with real CASA")
    s.add_argument("out", help="output folder (archive/ is written inside)")
    s.add_argument("--ebs", type=int, default=2, help="execution blocks (default 2)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    s.add_argument("--antennas", type=int, default=8, help="12-m antennas (default 8)")
    s.add_argument("--sessions", type=_session_numbers, default=None,
                   help="session number of each EB, e.g. 1,1,3 (default: two EBs a session, odd numbers)")
    s.add_argument("--restore-template", choices=("current", "old"), default="current",
                   help="restore script form: current, or old (fixsyscaltimes import, before late 2020)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("inspect", help="print the regeneration plan of a member folder")
    s.add_argument("member_dir")
    s.add_argument("--json", action="store_true", help="the documented JSON object")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("casa-versions", help="list the installed CASA versions (the CASA registry)")
    s.add_argument("--json", action="store_true", help="one JSON object per CASA")
    s.set_defaults(func=cmd_casa_versions)
    actions = s.add_subparsers(dest="casa_action", metavar="ACTION")
    add = actions.add_parser("add-pipeline", help="build a pipeline CASA from an ALMA pipeline release "
                                                  "(source tree, .tar.gz or wheel) and register it")
    add.add_argument("path", help="the pipeline release")
    add.add_argument("--layers", default=None, help="where layers are built (default: <workdir>/casa-layers)")
    add.add_argument("--registry", default=None, help="the registry file to add to (default: "
                                                      "$ALMA_REGEN_CASA_REGISTRY, else <workdir>/casa-registry.json)")
    add.set_defaults(func=cmd_add_pipeline)

    s = sub.add_parser("restore", help="calibrate a member folder (restore, pipeline or manual)")
    s.add_argument("member_dir")
    s.add_argument("--engine", default="auto", choices=["auto", "native", "scriptforpi", "pipeline", "manual"])
    s.add_argument("--casa-version", default="", help="override the CASA version of the README")
    s.add_argument("--dosplit", action="store_true", help="split the science spws (scriptForPI's DOSPLIT)")
    s.add_argument("--spacesaving", type=int, default=1, help="scriptForPI's SPACESAVING (default 1; -1: no disk check)")
    s.add_argument("--docontsub", action="store_true", help="scriptForPI's DOCONTSUB")
    s.add_argument("--parallel", type=int, default=1, help="EBs restored at once (native engine)")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds per CASA run (default: from the raw data's size and the settings)")
    s.set_defaults(func=cmd_restore)

    # Later steps register here (stage, serve-archive, restore, image, publish, run, demo).
    for register in _EXTRA:
        register(sub)
    return p


# Modules that add subcommands: each is a function taking the subparsers object.
_EXTRA = []


def _register_staging(sub):
    from .staging.command import register  # stage, serve-archive
    register(sub)


_EXTRA.append(_register_staging)


def _register_chain(sub):
    from .demo import register_cli, run_cli  # demo, run
    register_cli(sub)
    run_cli(sub)


_EXTRA.append(_register_chain)


def _register_products(sub):
    from .product_commands import register  # image, publish
    register(sub)


_EXTRA.append(_register_products)


def _register_workspace(sub):
    from .workspace import register  # clean, raw-cache
    register(sub)


_EXTRA.append(_register_workspace)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
