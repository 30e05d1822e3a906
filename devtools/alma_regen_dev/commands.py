"""The dev tools' subcommands of `alma-regen`: synth, serve-archive, demo.

Declared in devtools/pyproject.toml under the entry-point group `alma_regen.commands`
(one entry point per command, named after it); the product's CLI (alma_regen.cli)
adds them when this distribution is installed. Each function takes the subparsers
object; the tools themselves are imported only when their command runs, so
`alma-regen --help` stays fast.
"""
import argparse


def register_synth(sub) -> None:
    s = sub.add_parser("synth", help="build a synthetic ALMA delivery with real CASA (dev tool)")
    s.add_argument("out", help="output folder (archive/ is written inside)")
    s.add_argument("--ebs", type=int, default=2, help="execution blocks (default 2)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    s.add_argument("--style", default="cycle10", metavar="STYLE",
                   help="the kind of package (alma_regen_dev.zoo): cycle10 (default, today's), cycle5, "
                        "cycle4, manual, polarisation, single-dish")
    s.add_argument("--antennas", type=int, default=None, help="12-m antennas (default 8; cycle10 only)")
    s.add_argument("--sessions", type=_session_numbers, default=None,
                   help="session number of each EB, e.g. 1,1,3 (default: two EBs a session, odd numbers; "
                        "cycle10 only)")
    s.add_argument("--restore-template", choices=("current", "old"), default=None,
                   help="restore script form: current (default), or old (fixsyscaltimes import, before "
                        "late 2020; cycle10 only)")
    s.set_defaults(func=cmd_synth)


def _session_numbers(text):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected session numbers such as 1,1,3, not {text!r}") from None


def cmd_synth(a):
    from alma_regen.cli.common import print_json
    from alma_regen.errors import PermanentError

    from . import zoo
    options = {k: v for k, v in (("antennas", a.antennas), ("sessions", a.sessions),
                                 ("restore_template", a.restore_template)) if v is not None}
    if options and a.style != "cycle10":
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise PermanentError(f"{flags} apply to --style cycle10 only, not {a.style}")
    print_json(zoo.build(a.style, a.out, ebs=a.ebs, seed=a.seed, **options))


def register_serve_archive(sub) -> None:
    s = sub.add_parser("serve-archive", help="serve an archive folder as an ALMA request handler (dev tool)")
    s.add_argument("archive_dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    s.add_argument("--control", action="store_true", help="enable the /_control fault endpoint")
    g = s.add_argument_group("faults (for tests)")
    g.add_argument("--fault-file", default="", help="limit faults to this file name")
    g.add_argument("--drop-after", type=int, default=-1, help="cut the connection after N body bytes")
    g.add_argument("--drop-count", type=int, default=1, help="... in this many responses (-1: all)")
    g.add_argument("--fail-first", type=int, default=0, help="503 for the first K file requests")
    g.add_argument("--slow-bps", type=int, default=0, help="throttle bodies to N bytes/s")
    g.add_argument("--wrong-length", type=int, default=0, help="add N to the Content-Length header")
    g.add_argument("--change-to", default="", help="after --change-after requests, serve this file instead")
    g.add_argument("--change-after", type=int, default=1)
    s.set_defaults(func=cmd_serve_archive)


def cmd_serve_archive(a) -> None:
    from alma_regen.errors import PermanentError

    from .serve_archive import Faults, serve
    faults = Faults(file=a.fault_file, drop_after=a.drop_after, drop_count=a.drop_count,
                    fail_first=a.fail_first, slow_bps=a.slow_bps, wrong_length=a.wrong_length,
                    change_to=a.change_to, change_after=a.change_after)
    try:
        serve(a.archive_dir, a.host, a.port, a.control, faults)
    except OSError as exc:
        raise PermanentError(f"cannot listen on {a.host}:{a.port}: {exc}") from None


def register_demo(sub) -> None:
    s = sub.add_parser("demo", help="run the main job end to end on embedded defaults (.demo/; dev tool)")
    s.add_argument("--dir", default=".demo", help="where the demo works (default .demo)")
    s.add_argument("--port", type=int, default=8080, help="the Airflow UI's port (default 8080)")
    s.add_argument("--no-wait", action="store_true", help="stop Airflow when the run has ended")
    s.set_defaults(func=cmd_demo)


def cmd_demo(a) -> int:
    from .demo import run_demo
    return 0 if run_demo(a.dir, a.port, not a.no_wait) == "success" else 1
