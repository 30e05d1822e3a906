"""`alma-regen inspect`, `casa-versions` (and `casa-versions add-pipeline`), `restore`."""
from ..calibrated import Options
from .common import casa_timeout, casa_version_arg, member_step, print_json

# SPACESAVING when none is given: the calibration's default (calibrated.Options), so `inspect`
# judges the disk as `restore` and `run` will use it.
DEFAULT_SPACESAVING = Options.spacesaving


def cmd_inspect(a):
    from ..member import Member
    plan = Member.coerce(a.member_dir).delivery.plan(require_all_ebs=a.require_all_ebs,
                                                     spacesaving=a.spacesaving)
    if a.json:
        print_json(plan)
    else:
        from ..delivery import format_plan
        print(format_plan(plan))
    # The plan is printed either way; the exit status says whether it can run.
    return 0 if plan["ok"] else 1


def cmd_casa_versions(a):
    from ..casa.registry import load_registry
    registry = load_registry()
    if a.json:
        print_json([c.as_dict() for c in registry.launchers])
    else:
        for c in registry.launchers:
            print(f"{c.version!s:12} {c.kind:8} {c.pipeline or '-':14} {c.executable}  ({c.source})")


def cmd_add_pipeline(a):
    from ..casa.pipeline_layer import add_pipeline
    print_json(add_pipeline(a.path, layers=a.layers, registry=a.registry))


def cmd_restore(a):
    from ..calibration import Options, calibrate
    version = casa_version_arg(a.casa_version)
    with member_step(a.member_dir, "restore"):
        summary = calibrate(a.member_dir, Options(engine=a.engine, casa_version=version,
                                                  dosplit=a.dosplit, spacesaving=a.spacesaving,
                                                  docontsub=a.docontsub,
                                                  timeout_s=casa_timeout(a.member_dir, a.timeout)),
                            parallel=a.parallel)
    print_json({k: summary[k] for k in ("mous_uid", "plan", "elapsed_s")} |
                {"outputs": [r["output"] for r in summary["ebs"]]})


def register(sub):
    s = sub.add_parser("inspect", help="print the regeneration plan of a member folder")
    s.add_argument("member_dir")
    s.add_argument("--json", action="store_true", help="the documented JSON object")
    s.add_argument("--require-all-ebs", action="store_true",
                   help="a PPR EB missing from raw/ is an error (default: a warning, as scriptForPI)")
    s.add_argument("--spacesaving", type=int, default=DEFAULT_SPACESAVING,
                   help=f"the SPACESAVING scriptForPI's disk check is judged at (default {DEFAULT_SPACESAVING}, "
                        "as restore; -1: no disk check)")
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
    s.add_argument("--spacesaving", type=int, default=DEFAULT_SPACESAVING,
                   help=f"scriptForPI's SPACESAVING (default {DEFAULT_SPACESAVING}; -1: no disk check)")
    s.add_argument("--docontsub", action="store_true", help="scriptForPI's DOCONTSUB")
    s.add_argument("--parallel", type=int, default=1, help="EBs restored at once (native engine)")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds per CASA run (default: from the raw data's size and the settings)")
    s.set_defaults(func=cmd_restore)
