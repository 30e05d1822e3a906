"""`alma-regen demo` (README's first command): the main job end to end on embedded defaults.

A synthetic delivery made on the spot with real CASA (reused on a second
run), served by a local request handler (`serve-archive`), then staged,
inspected and calibrated. Everything lands under .demo/ in the current folder.
"""
import json
import logging
import threading
import time
from pathlib import Path

from . import naming
from .chain import run_mous
from .serve_archive import ArchiveServer
from .synth import synthesize

log = logging.getLogger(__name__)


def _synthetic(root: Path) -> dict:
    """The synthetic delivery: made once, reused while its archive is complete."""
    record = root / "synth.json"
    if record.is_file():
        s = json.loads(record.read_text())
        if all((Path(s["archive_dir"]) / f["name"]).is_file() for f in s["files"]):
            print(f"demo: reusing the synthetic delivery of {s['mous_uid']} in {s['archive_dir']}")
            return s
    print("demo: making a synthetic ALMA delivery with real CASA (about 15 s) ...", flush=True)
    s = synthesize(root / "synth", ebs=2, seed=1)
    record.write_text(json.dumps(s, indent=1))
    return s


def run_demo(root=".demo") -> dict:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    s = _synthetic(root)
    server = ArchiveServer(s["archive_dir"], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    try:
        print(f"demo: request handler serving {s['archive_dir']} at {server.url}", flush=True)
        result = run_mous(s["mous_uid"], server.url, root / "work")
    finally:
        server.shutdown()
        server.server_close()
    member = Path(result["member_dir"])
    print()
    print(f"demo: {s['mous_uid']} ({s['project']}, {len(s['ebs'])} EBs) done in {time.monotonic() - t0:.1f} s")
    for step, secs in result["timings_s"].items():
        print(f"  {step:<10} {secs:7.1f} s")
    print(f"  member folder      {member}")
    print(f"  calibration        {member / 'calibrated' / 'calibration.json'}")
    for rec in result["calibration"]["ebs"]:
        print(f"  calibrated MS      {rec['output']}")
    print(f"  plan               alma-regen inspect {member}")
    print("demo: imaging, publishing and the Airflow run are not part of this demo yet "
          "(see the open issues).")
    return result


def register_cli(sub):
    s = sub.add_parser("demo", help="run the main job end to end on embedded defaults (.demo/)")
    s.add_argument("--dir", default=".demo", help="where the demo works (default .demo)")
    s.set_defaults(func=lambda a: run_demo(a.dir) and 0)


def run_cli(sub):
    s = sub.add_parser("run", help="the whole chain for one MOUS without Airflow")
    s.add_argument("mous", help="uid://A001/X.../X...")
    s.add_argument("--source", required=True, help="http(s)://request-handler or s3://bucket/prefix")
    s.add_argument("--workdir", required=True)
    s.add_argument("--publish-to", default=None, help="s3://bucket/prefix (credentials from the environment)")
    s.add_argument("--imaging", default="auto", choices=["auto", "pipeline", "script", "native", "none"])
    s.add_argument("--parallel", type=int, default=2, help="EBs (and imaging units) at once")

    def cmd(a):
        naming.uid_to_file(a.mous)  # a clear error for a malformed uid
        r = run_mous(a.mous, a.source, a.workdir, parallel=a.parallel, imaging=a.imaging,
                     publish_to=a.publish_to)
        print(json.dumps({"mous_uid": r["mous_uid"], "member_dir": r["member_dir"], "timings_s": r["timings_s"],
                          "calibrated": [e["output"] for e in r["calibration"]["ebs"]],
                          "images": (r["imaging"] or {}).get("products"),
                          "fidelity_ok": (r["fidelity"] or {}).get("ok"),
                          "published": (r["manifest"] or {}).get("location")}, indent=2))
        return 0
    s.set_defaults(func=cmd)
