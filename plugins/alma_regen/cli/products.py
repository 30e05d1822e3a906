"""`alma-regen image` and `alma-regen publish`: the same library calls as the operators."""
from .common import casa_timeout, member_step, print_json


def cmd_image(a):
    from .. import fidelity, imaging
    with member_step(a.member_dir, "image"):
        timeout = casa_timeout(a.member_dir, a.timeout)
        record = imaging.image(a.member_dir, engine=a.engine, workers=a.workers, timeout=timeout)
        out = {"engine": record["engine"], "reason": record["reason"], "products": record["products"],
               "seconds": record["seconds"]}
        if not a.no_fidelity:
            # Written to fidelity.json either way; a bad match fails the command (exit 2) after printing.
            doc = fidelity.check_fidelity(a.member_dir, raise_on_failure=False, timeout=timeout)
            out["fidelity"] = {"ok": doc["ok"], "summary": doc["summary"],
                               "failures": {e["image"]: e["failures"] for e in doc["images"] if e.get("failures")}}
    print_json(out)
    if out.get("fidelity") and not out["fidelity"]["ok"]:
        from ..errors import PermanentError
        raise PermanentError("fidelity check failed: " + " | ".join(
            f"{k}: {'; '.join(v)}" for k, v in out["fidelity"]["failures"].items()))


def cmd_publish(a):
    from ..products import publish
    with member_step(a.member_dir, "publish"):
        manifest = publish.publish(a.member_dir, a.to, run=a.run, include_ms=a.include_ms, workers=a.workers)
    print_json({"run": manifest["run"], "location": manifest["location"], "objects": len(manifest["outputs"]),
                "bytes": sum(o["size"] for o in manifest["outputs"]),
                "fidelity": (manifest["fidelity"] or {}).get("summary")})


def register(sub):
    s = sub.add_parser("image", help="regenerate the images of a calibrated member folder, then check fidelity")
    s.add_argument("member_dir")
    s.add_argument("--engine", default="auto", choices=["auto", "pipeline", "script", "native"])
    s.add_argument("--workers", type=int, default=1, help="native work units (target x spw) run at once")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds per CASA run (default: from the raw data's size and the settings)")
    s.add_argument("--no-fidelity", action="store_true", help="skip the comparison with product/")
    s.set_defaults(func=cmd_image)

    s = sub.add_parser("publish", help="publish products, fidelity and logs to S3 (manifest last)")
    s.add_argument("member_dir")
    s.add_argument("--to", required=True, help="s3://bucket/prefix")
    s.add_argument("--run", default=None, help="run id (default: a new unique one)")
    s.add_argument("--include-ms", action="store_true", help="also the calibrated MSs, as streamed tars")
    s.add_argument("--workers", type=int, default=8, help="parallel uploads")
    s.set_defaults(func=cmd_publish)
