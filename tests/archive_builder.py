"""Small, valid, ALMA-shaped archive files built in pure Python (no CASA): fast staging tests.

An ASDM here has what `alma_regen.asdm.validate_asdm` reads: ASDM.xml with
<Table><Name>/<NumberRows>, Main.xml rows whose dataUID names a file of
ASDMBinary/, Antenna.xml, ExecBlock.xml with the execBlockUID. Binary files are
random bytes, so a mixed-up byte shows in a comparison.
"""
from __future__ import annotations

import io
import os
import random
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from alma_regen import naming
from alma_regen.staging import StageOptions

# Staging options for tests against local servers: retries come quickly and give up soon.
FAST = StageOptions(backoff=0.01, max_attempts=3)

PROJECT = "2023.1.00001.S"
MOUS = "uid://A001/X1a2b/X3c"
SCIENCE_GOAL = "uid___A001_X1a2b_X3a"
GROUP = "uid___A001_X1a2b_X3b"
EBS = ("uid://A002/Xb4264b/X47af", "uid://A002/Xb4264b/X5e01")


def prefix(project: str = PROJECT, mous: str = MOUS) -> str:
    return (f"{project}/science_goal.{SCIENCE_GOAL}/group.{GROUP}/"
            f"member.{naming.uid_to_file(mous)}")


def asdm_files(eb: str, n_binaries: int = 3, binary_size: int = 64 * 1024, seed: int = 0) -> dict:
    """{path inside the ASDM folder: bytes} of a small complete ASDM."""
    rnd = random.Random(f"{eb}/{seed}")
    eb_file = naming.uid_to_file(eb)
    data_uids = [f"uid://A002/X{eb_file.split('_')[-2][1:]}/X{i + 1:x}" for i in range(n_binaries)]
    tables = {"Main": n_binaries, "Antenna": 4, "ExecBlock": 1, "Scan": 2, "SpectralWindow": 3}
    asdm_xml = "".join(f"<Table><Name>{n}</Name><NumberRows>{r}</NumberRows></Table>" for n, r in tables.items())
    main_rows = "".join(f'<row><dataUID><EntityRef entityId="{u}" partId="X00000000" '
                        f'entityTypeName="Main"/></dataUID></row>' for u in data_uids)
    files = {
        "ASDM.xml": f'<?xml version="1.0"?><ASDM><Entity entityId="{eb}"/>{asdm_xml}</ASDM>'.encode(),
        "Main.xml": f'<?xml version="1.0"?><MainTable>{main_rows}</MainTable>'.encode(),
        "Antenna.xml": b'<?xml version="1.0"?><AntennaTable>' + b"<row/>" * 4 + b"</AntennaTable>",
        "ExecBlock.xml": (f'<?xml version="1.0"?><ExecBlockTable><row><execBlockUID><EntityRef entityId="{eb}"/>'
                          f'</execBlockUID></row></ExecBlockTable>').encode(),
        "Scan.xml": b'<?xml version="1.0"?><ScanTable><row/><row/></ScanTable>',
        "SpectralWindow.bin": rnd.randbytes(3000),
    }
    for u in data_uids:
        files[f"ASDMBinary/{naming.data_uid_to_file(u)}"] = rnd.randbytes(binary_size)
    return files


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = len(data), 0o644
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _prefix_dirs(tar, pfx: str) -> None:
    parts = pfx.split("/")
    for i in range(1, len(parts) + 1):
        _add(tar, "/".join(parts[:i]))


def write_tar(path: Path, members: dict, pfx: str, subdirs=(), fmt=tarfile.GNU_FORMAT) -> Path:
    """A tar of `members` ({relative path: bytes or None for a directory}) under `pfx`."""
    with tarfile.open(path, "w", format=fmt) as tar:
        _prefix_dirs(tar, pfx)
        done = set()
        for rel, data in members.items():
            # the directory entries a real tar carries before its files
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in done:
                    done.add(d)
                    _add(tar, f"{pfx}/{d}")
            _add(tar, f"{pfx}/{rel}", data)
    return path


def asdm_tar(path: Path, eb: str, project=PROJECT, mous=MOUS, **kw) -> Path:
    asdm = naming.asdm_dir(eb)
    members = {f"raw/{asdm}/{k}": v for k, v in asdm_files(eb, **kw).items()}
    return write_tar(path, members, prefix(project, mous))


def ppr_xml(ebs) -> bytes:
    refs = "".join(
        f"<SchedBlockSet><SchedBlockIdentifier><AsdmIdentifier><AsdmRef><ExecBlockId>{eb}</ExecBlockId>"
        f"</AsdmRef><AsdmDiskName>{naming.uid_to_file(eb)}</AsdmDiskName></AsdmIdentifier>"
        f"</SchedBlockIdentifier></SchedBlockSet>" for eb in ebs)
    return (f'<?xml version="1.0" encoding="UTF-8"?><SciPipeRequest><ProcessingRequests><ProcessingRequest>'
            f"<DataSet>{refs}</DataSet></ProcessingRequest></ProcessingRequests></SciPipeRequest>").encode()


def aux_members(mous=MOUS, ebs=EBS) -> dict:
    m = naming.uid_to_file(mous)
    out = {
        f"script/member.{m}.scriptForPI.py": b"# scriptForPI\n",
        f"script/member.{m}.hifa_calimage.casa_piperestorescript.py": b"# restore\n",
        f"script/PPR_{m}.xml": ppr_xml(ebs),
        f"qa/{m}.qa2_report.html": b"<html>CASA version used for reduction: 6.5.4-9</html>",
        f"log/casa-20240101-000000.log": b"log\n",
    }
    for eb in ebs:
        out[f"calibration/{naming.uid_to_file(eb)}.ms.calapply.txt"] = b"# Apply file\n"
    return out


@dataclass
class Archive:
    """An archive folder as the request handler serves it."""
    dir: Path
    project: str
    mous: str
    ebs: tuple
    files: dict = field(default_factory=dict)  # name -> semantics

    def path(self, name: str) -> Path:
        return self.dir / name

    def asdm_name(self, eb: str) -> str:
        return naming.asdm_tar(self.project, eb)


def build_archive(out: Path, project=PROJECT, mous=MOUS, ebs=EBS, n_binaries=3,
                  binary_size=64 * 1024) -> Archive:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arc = Archive(out, project, mous, tuple(ebs))
    pfx = prefix(project, mous)
    readme = naming.readme_name(mous)
    (out / readme).write_bytes(b"CASA version used for reduction: 6.5.4-9\n")
    arc.files[readme] = "#documentation"
    aux = naming.auxiliary_tar(project, mous)
    write_tar(out / aux, aux_members(mous, ebs), pfx)
    arc.files[aux] = "#auxiliary"
    prod = naming.product_tar(project, mous)
    write_tar(out / prod, {"product/member.target.spw25.cont.I.pbcor.fits": os.urandom(20000)}, pfx)
    arc.files[prod] = "#this"
    for i, eb in enumerate(ebs):
        name = naming.asdm_tar(project, eb)
        asdm_tar(out / name, eb, project, mous, n_binaries=n_binaries, binary_size=binary_size, seed=i)
        arc.files[name] = "#progenitor"
    return arc


# An EB the PPR lists and the archive does not serve (a partial run, as scriptForPI goes on).
MISSING_EB = "uid://A002/Xb4264b/X9999"


def build_partial_archive(out: Path) -> Archive:
    """Two small EBs served, a third (MISSING_EB) in the PPR only."""
    arc = build_archive(out, n_binaries=2, binary_size=20_000)
    write_tar(arc.path(naming.auxiliary_tar(arc.project, arc.mous)),
              aux_members(arc.mous, arc.ebs + (MISSING_EB,)), prefix())
    return arc


def tree_bytes(root: Path) -> dict:
    """{relative path: bytes} of every file under root (for byte-identical comparisons)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tar_contents(tar_path: Path, strip: str) -> dict:
    """{path with `strip` removed: bytes} of the regular files of a tar (the reference)."""
    out = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if m.isreg() and m.name.startswith(strip):
                out[m.name[len(strip):]] = tar.extractfile(m).read()
    return out


def touch_later(path: Path) -> None:
    """Move a file's mtime forward (a 'changed' source for ETag/Last-Modified)."""
    t = time.time() + 10
    os.utime(path, (t, t))


def expected_member(arc: Archive) -> dict:
    """{path in the member folder: bytes}: what staging `arc` must produce, from the tars themselves."""
    pfx = prefix(arc.project, arc.mous) + "/"
    out = {}
    for name, sem in arc.files.items():
        if sem == "#documentation":
            out[name] = arc.path(name).read_bytes()
        else:
            out.update(tar_contents(arc.path(name), pfx))
    return out


def staged_member(member: Path) -> dict:
    """{path: bytes} of a member folder, without the hidden bookkeeping (stamps, locks)."""
    return {k: v for k, v in tree_bytes(member).items() if not any(p.startswith(".") for p in k.split("/"))}


def upload(arc: Archive, client, bucket: str, key_prefix: str) -> None:
    for name in arc.files:
        client.upload_file(str(arc.path(name)), bucket, f"{key_prefix}/{name}" if key_prefix else name)
