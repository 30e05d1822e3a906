"""`alma-regen run`: the whole chain for one MOUS without Airflow (alma_regen.standalone)."""
import json


def register(sub):
    s = sub.add_parser("run", help="the whole chain for one MOUS without Airflow")
    s.add_argument("mous", help="uid://A001/X.../X...")
    s.add_argument("--source", required=True, help="http(s)://request-handler or s3://bucket/prefix")
    s.add_argument("--workdir", required=True)
    s.add_argument("--publish-to", default=None, help="s3://bucket/prefix (credentials from the environment)")
    s.add_argument("--imaging", default="auto", choices=["auto", "pipeline", "script", "native", "none"])
    s.add_argument("--parallel", type=int, default=2, help="EBs (and imaging units) at once")
    s.add_argument("--require-all-ebs", action="store_true",
                   help="a PPR EB the archive lacks is an error (default: a warning, the run goes on with the other EBs and is published as partial, as scriptForPI does)")
    s.set_defaults(func=cmd_run)


def cmd_run(a):
    from .. import naming
    from ..standalone import run_mous
    naming.uid_to_file(a.mous)  # a clear error for a malformed uid
    r = run_mous(a.mous, a.source, a.workdir, parallel=a.parallel, imaging=a.imaging, publish_to=a.publish_to,
                 require_all_ebs=a.require_all_ebs)
    print(json.dumps({"mous_uid": r["mous_uid"], "member_dir": r["member_dir"], "timings_s": r["timings_s"],
                      "calibrated": [e["output"] for e in r["calibration"]["ebs"]],
                      "images": (r["imaging"] or {}).get("products"),
                      "fidelity_ok": (r["fidelity"] or {}).get("ok"),
                      "published": (r["manifest"] or {}).get("location"),
                      "missing_ebs": r["plan"]["raw"].get("missing", [])}, indent=2))
    return 0
