"""Publish a member's products to object storage, never half-written.

Layout, for `s3://bucket/prefix` and MOUS uid___A001_X1_X2:
    prefix/uid___A001_X1_X2/<run>/products/*.fits        regenerated images
                                 /fidelity.json, imaging.json, calibration.json
                                 /logs/<path>/casa-*.log
                                 /index.html, thumbnails/*.png   the summary page
                                 /calibrated/<EB>.ms.split.cal.tar   (optional, streamed)
                                 /manifest.json          written LAST
    prefix/uid___A001_X1_X2/latest.json                  moved after the manifest

manifest.json: schema, mous_uid, run, location, published_at, alma_regen, inputs (the archive
files as staged), engines, timings_s, outputs (every object, verified), fidelity, and
`partial`: null when every EB of the PPR was calibrated, else {"missing_ebs": [EB uids the
run went without], "reasons": {EB uid: why, e.g. what the archive answered}}: a run the
archive could not give every EB for goes on with the rest as scriptForPI does (the DAG's
`require_all_ebs`, `--require-all-ebs`, make that an error instead).

Rules: a set without manifest.json is not published (readers look for the
manifest first); every object is verified after upload (HEAD: size, and the
S3 CRC32 checksum the server computed from the bytes it received against our
own part checksums; on a server without additional checksums, the ETag against
our MD5s); a run whose manifest exists is never written again (a rerun picks a
new run id, or is refused); objects of an interrupted attempt with the same run
id are reused when they verify, re-uploaded otherwise. Every file is read once:
its parts are hashed by the upload threads while they go up, its sha256 (the
manifest's) as it is read; only a resumed publish reads a file twice. The
calibrated MS tar is built while it uploads (tarfile in stream mode feeding
multipart parts): nothing is staged on disk.

Credentials: the caller's client (the operator's, from the `alma_products_s3`
connection through its hook), else `s3.s3_client()` from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ALMA_REGEN_S3_ENDPOINT or
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION). This module does not import Airflow.
"""
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import DeliveryError, PermanentError
from ..member import Member
from ..s3 import key as s3_key, parse_s3_url, s3_client
from ..scrub import scrub_bytes
from .claim import claim_run, default_owner
from .manifest import SCHEMA, check_run, new_run_id
from .summary import summary_html
from .upload import PART_SIZE, WORKERS, Uploader, tar_chunks, upload_bytes

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ what to publish

def _calibration_json(member: Member) -> Path | None:
    for p in (member.calibration_summary, member.root / "calibration.json"):
        if p.is_file():
            return p
    return None


def collect(member_dir, include_ms: bool = False) -> dict:
    """{relative key: local Path} of the files to publish, plus the MSs to stream."""
    member = Member.coerce(member_dir)
    products = sorted(member.imaging_products.glob("*.fits"))
    if not products:
        raise PermanentError(f"{member.imaging_products} holds no FITS image: run alma-regen image first")
    files = {f"products/{p.name}": p for p in products}
    for p in (member.fidelity_record, member.imaging_record):
        if p.is_file():
            files[p.name] = p
    cal = _calibration_json(member)
    if cal:
        files["calibration.json"] = cal
    for p in sorted(member.thumbnails.glob("*.png")):
        files[f"thumbnails/{p.name}"] = p
    for base in (member.calibrated, member.imaging):
        if base.is_dir():
            for log_file in sorted(base.rglob("casa-*.log")):
                files[f"logs/{log_file.relative_to(member.root)}"] = log_file
    streams = {}
    if include_ms:
        from ..imaging import calibrated_ms
        for ms in calibrated_ms(member):
            streams[f"calibrated/{ms.name}.tar"] = ms.resolve()
    return {"files": files, "streams": streams}


def inputs_of(member_dir) -> list:
    """The inputs with sizes and checksums: the staging stamps where staging left them
    (size and sha256 of each archive file as downloaded), else hashes of the member's files."""
    member = Member.coerce(member_dir)
    stamps = member.stamps()
    if stamps:
        out = []
        for s in stamps:
            d = json.loads(s.read_text())
            out.append({"file": d.get("file"), "size": d.get("size"), "sha256": d.get("sha256"),
                        "source": d.get("source"), "kind": d.get("kind")})
        return out
    out = []
    for folder in (member.script, member.calibration):
        for p in sorted(folder.glob("*")):
            if p.is_file():
                out.append({"file": f"{folder.name}/{p.name}", "size": p.stat().st_size, "sha256": _sha256_file(p)})
    for asdm in sorted(member.raw.glob("*.asdm.sdm")):
        size, digest = _tree_digest(asdm)
        out.append({"file": f"raw/{asdm.name}", "size": size, "sha256_tree": digest})
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(folder: Path):
    """sha256 over (relative path, sha256) of every file: one checksum for an ASDM directory."""
    h, size = hashlib.sha256(), 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            size += p.stat().st_size
            h.update(f"{p.relative_to(folder)}\0{_sha256_file(p)}\n".encode())
    return size, h.hexdigest()


def _load(path: Path | None):
    return json.loads(path.read_text()) if path and path.is_file() else None


# ------------------------------------------------------------------ publish


def publish(member_dir, to: str, *, run: str | None = None, client=None, include_ms: bool = False,
            part_size: int = PART_SIZE, workers: int = WORKERS, progress=None, requested: dict | None = None,
            owner: str | None = None) -> dict:
    """Upload and verify everything, then manifest.json, then latest.json. Returns the manifest.

    requested: what the operator asked for ({"calibration": "auto", "imaging": "auto"}), when known.

    run: the run id (default: a new unique one); a run whose manifest exists is refused.
    client: a boto3 S3 client (default: `s3_client()` from the environment).
    progress: called as progress(key, bytes_done, total_or_None) while uploading.
    owner: who publishes (default host:pid); a claim of the same owner is resumed (products/claim.py).
    """
    t0 = time.monotonic()
    member = Member.coerce(member_dir)
    bucket, prefix = parse_s3_url(to)
    mous = member.mous
    if not mous:
        raise PermanentError(f"{member} is not a member.<MOUS> folder: cannot tell which MOUS to publish")
    mous_f = member.mous_file
    run = run or new_run_id()
    check_run(run)
    base = s3_key(prefix, mous_f, run) + "/"
    latest_key = s3_key(prefix, mous_f, "latest.json")
    location = f"s3://{bucket}/{base}"
    what = collect(member, include_ms)
    client = client or s3_client(workers=workers)
    up = Uploader(client, bucket, part_size=part_size, workers=workers, progress=progress)
    claim = None
    try:
        if up.head(base + "manifest.json") is not None:
            raise PermanentError(f"{location} is already published (its manifest.json exists); a rerun never "
                                 "overwrites a published run: publish under a new run id")
        # One publisher per run id, decided by the store (a conditional PUT): before any upload.
        claim = claim_run(client, bucket, base, owner or default_owner(), location,
                          lambda: up.head(base + "manifest.json") is not None)
        imaging_doc = _load(member.imaging_record)
        fidelity_doc = _load(member.fidelity_record)
        outputs = []
        files = what["files"]
        log.info("publishing %d file(s)%s to %s", len(files),
                 f" and {len(what['streams'])} streamed MS tar(s)" if what["streams"] else "", location)
        # Small files in parallel; each large one spreads its parts over the same workers.
        with ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="s3-file") as pool:
            # CASA logs go up scrubbed of anything that looks like a credential (second line of defence).
            futures = [pool.submit(upload_bytes, up, base + key, scrub_bytes(path.read_bytes()))
                       if key.startswith("logs/") else pool.submit(up.upload_file, path, base + key)
                       for key, path in files.items()]
            for f in futures:
                outputs.append(f.result())
        for key, folder in what["streams"].items():
            outputs.append(up.upload_stream(base + key, tar_chunks(folder, folder.name, part_size)))
        page = summary_html(mous, run, imaging_doc, fidelity_doc, list(files))
        outputs.append(upload_bytes(up, base + "index.html", page.encode()))
        for o in outputs:
            o["key"] = o["key"][len(base):]
        manifest = {
            "schema": SCHEMA, "mous_uid": mous, "run": run, "location": location,
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "alma_regen": __version__,
            "inputs": inputs_of(member),
            "engines": _engines(member, imaging_doc, requested),
            "timings_s": {"imaging": (imaging_doc or {}).get("seconds"),
                          "calibration": (_load(_calibration_json(member)) or {}).get("elapsed_s"),
                          "publish": round(time.monotonic() - t0, 3)},
            "outputs": sorted(outputs, key=lambda o: o["key"]),
            "fidelity": _fidelity_summary(fidelity_doc),
            "partial": partial_of(member),
        }
        # Last: the manifest makes the set published; latest.json follows it.
        body = json.dumps(manifest, indent=1).encode()
        upload_bytes(up, base + "manifest.json", body)
        latest = {"mous_uid": mous, "run": run, "manifest": f"s3://{bucket}/{base}manifest.json",
                  "manifest_sha256": hashlib.sha256(body).hexdigest(), "published_at": manifest["published_at"]}
        upload_bytes(up, latest_key, json.dumps(latest, indent=1).encode())
    finally:
        if claim is not None:
            claim.release()
        up.close()
    log.info("published %s: %d objects, manifest written last, latest.json moved (%.1f s)", location,
             len(manifest["outputs"]), time.monotonic() - t0)
    return manifest


def partial_of(member) -> dict | None:
    """{"missing_ebs", "reasons"} when the run calibrated fewer EBs than the PPR lists, else None.

    The EBs calibrated are the calibration plan's (calibration.json); without one, those in raw/.
    The reasons are staging's record of what the archive said (staging.missing)."""
    from ..staging.missing import read_missing_ebs
    member = Member.coerce(member)
    try:
        ppr = member.delivery.ppr_ebs()
    except DeliveryError:
        return None
    done = ((_load(_calibration_json(member)) or {}).get("plan") or {}).get("ebs")
    missing = [eb for eb in ppr if eb not in done] if done is not None else member.delivery.ebs_not_in_raw(ppr)
    if not missing:
        return None
    said = {m.get("eb"): m.get("archive") for m in read_missing_ebs(member.root)}
    return {"missing_ebs": missing,
            "reasons": {eb: said.get(eb) or "not in raw/ when the calibration was planned" for eb in missing}}


def _engines(member, imaging_doc, requested: dict | None = None) -> dict:
    member = Member.coerce(member)
    cal = _load(_calibration_json(member)) or {}
    engines = {
        "imaging": {k: (imaging_doc or {}).get(k) for k in ("engine", "reason", "casa", "casa_choice")},
        "calibration": _calibration_engine(cal),
    }
    for step, doc in engines.items():
        asked = (requested or {}).get(step)
        if asked is None:
            continue
        doc["requested"] = asked
        # An engine that `auto` chose and that then ran whole records itself as
        # "requested": say what the delivery asked for instead of a request nobody made.
        if asked == "auto" and doc["reason"] == f"engine {doc['engine']} requested":
            doc["reason"] = f"auto: {_delivery_reason(member, step)}"
    return engines


def _delivery_reason(member: Member, step: str) -> str:
    try:
        kind = member.delivery.imaging_kind() if step == "imaging" else member.delivery.calibration_kind()
        return kind["reason"] or "as the delivery says"
    except DeliveryError:
        return "as the delivery says"


def _calibration_engine(cal: dict) -> dict:
    """engine, CASA version and why, from calibration.json (alma-regen/calibration/1)."""
    plan = cal.get("plan") or {}
    casa = (plan.get("casa") or {}).get("casa") or {}
    return {"engine": plan.get("engine"), "reason": plan.get("reason"), "casa": casa.get("version"),
            "casa_reason": (plan.get("casa") or {}).get("reason")}


def _fidelity_summary(doc) -> dict | None:
    if not doc:
        return None
    return {"ok": doc["ok"], "summary": doc["summary"], "tolerances": doc["tolerances"],
            "images": [{"image": e["image"], "status": e["status"], "counterpart": e.get("counterpart"),
                        "failures": e.get("failures", []),
                        "peak": (e.get("checks") or {}).get("peak"),
                        "diff_rms_sigma": ((e.get("checks") or {}).get("difference") or {}).get("diff_rms_sigma")}
                       for e in doc["images"]]}
