"""Packages of every cycle staged for real (issue 10 item 5), without CASA: built with
tests/archive_builder.py, served by serve-archive (HTTP) and SeaweedFS (S3).

A Cycle 0-4 archive has no `_auxiliary.tar`: script/, calibration/, the QA2 report (qa2/ in
Cycles 1-3) and the README (named `README`, no prefix) are inside the `_<n>_of_<N>.tar`
product tars, Cycle 0's named by date (`<project>_<date>_001_of_002.tar`). Early MOUS uids
are `uid://A002/...`. The expected decision is stated per case.
"""
from __future__ import annotations

import archive_builder as ab
from archive_builder import FAST
import pytest

from alma_regen import naming
from alma_regen.member import Member
from alma_regen.staging import HttpSource, S3Source, member_path, stage_mous
from alma_regen.staging.errors import HostileTarError, NotFoundError

PROJECT = "2013.1.00305.S"
MOUS = "uid://A002/X9d13e1/X1c"  # an early MOUS, in archive A002
EBS = ("uid://A002/X9d13e1/X2a3", "uid://A002/X9d2f70/X11b")
README = b"ALMA Cycle 2 data delivery\nCASA version: 4.2.2, Pipeline: none\n"


def package(out, *, dated=None, with_script=True, parts=2, extra=None):
    """An old package: product tars only, the auxiliary members and the README spread over them;
    `dated` names the tars as Cycle 0 did (`<project>_<dated>_<n>_of_<N>.tar`)."""
    out.mkdir(parents=True, exist_ok=True)
    arc = ab.Archive(out, PROJECT, MOUS, EBS)
    aux = ab.aux_members(MOUS, EBS)
    if not with_script:
        aux = {k: v for k, v in aux.items() if not k.startswith("script/")}
    # Cycles 1-3 kept the QA2 report in qa2/.
    aux = {("qa2/" + k[3:] if k.startswith("qa/") else k): v for k, v in aux.items()}
    members = [dict(aux, README=README, **{"product/member.tgt.spw17.cont.I.pbcor.fits": b"F" * 9000}),
               {"product/member.tgt.spw19.cube.I.pbcor.fits": b"C" * 12000}][:parts]
    if extra:
        members[0].update(extra)
    for n, mem in enumerate(members, 1):
        name = (f"{PROJECT}_{dated}_{n:03d}_of_{len(members):03d}.tar" if dated else
                naming.product_tar(PROJECT, MOUS, n, len(members)))
        ab.write_tar(out / name, mem, ab.prefix(PROJECT, MOUS))
        arc.files[name] = "#this"
    for i, eb in enumerate(EBS):
        name = naming.asdm_tar(PROJECT, eb)
        ab.asdm_tar(out / name, eb, PROJECT, MOUS, n_binaries=2, binary_size=20_000, seed=i)
        arc.files[name] = "#progenitor"
    return arc


def check_staged(arc, workdir, summary):
    member = member_path(workdir, MOUS)
    # Decision: every member of every product tar lands in the member folder (product/ of the two
    # tars merged, not the second replacing the first), the README at its root as `README`.
    assert ab.staged_member(member) == ab.expected_member(arc)
    assert (member / "README").read_bytes() == README
    assert (member / "qa2").is_dir() and (member / "script").is_dir()
    assert sorted(p.name for p in (member / "product").iterdir()) == [
        "member.tgt.spw17.cont.I.pbcor.fits", "member.tgt.spw19.cube.I.pbcor.fits"]
    # Decision: the PPR, read once the product tars are in, gives the EBs to stage.
    assert summary["ebs"] == list(EBS) and summary["missing_ebs"] == []
    assert Member.at(member).delivery.ppr_ebs() == list(EBS)
    kinds = {f["file"]: f["kind"] for f in summary["files"]}
    assert {k for n, k in kinds.items() if n.endswith("_of_002.tar")} == {"package"}


@pytest.fixture(scope="module")
def cycle2(tmp_path_factory):
    return package(tmp_path_factory.mktemp("cycle2") / "archive")


def test_a_package_without_auxiliary_tar_stages_from_http(tmp_path, cycle2, archive_server):
    served = archive_server(cycle2.dir)
    summary = stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)
    check_staged(cycle2, tmp_path / "work", summary)
    # A second run finds everything staged (the per-file stamps of product/<file> pieces hold).
    again = stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)
    assert {f["status"] for f in again["files"]} == {"skipped"}


def test_a_package_without_auxiliary_tar_stages_from_s3(tmp_path, cycle2, seaweedfs):
    bucket = seaweedfs.bucket("old")
    ab.upload(cycle2, seaweedfs.client(), bucket, "mirror")
    summary = stage_mous(MOUS, S3Source(f"s3://{bucket}/mirror", seaweedfs.client(), workers=1),
                         tmp_path / "work", FAST)
    check_staged(cycle2, tmp_path / "work", summary)


def test_cycle0_dated_tars_stage_from_http(tmp_path, archive_server):
    # Decision: serve-archive ties the dated tars to the MOUS by their members (as the archive's
    # listing does), and staging takes them as the package.
    arc = package(tmp_path / "archive", dated="2012-07-30")
    served = archive_server(arc.dir)
    summary = stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)
    assert sorted(f["file"] for f in summary["files"] if f["kind"] == "package") == [
        f"{PROJECT}_2012-07-30_001_of_002.tar", f"{PROJECT}_2012-07-30_002_of_002.tar"]
    assert ab.staged_member(member_path(tmp_path / "work", MOUS)) == ab.expected_member(arc)


def test_product_tars_without_script_are_not_a_package(tmp_path, archive_server):
    # Decision: no auxiliary tar and no script/ in the product tars: a modern package whose
    # auxiliary tar is not listed; a NotFoundError before any ASDM is fetched.
    arc = package(tmp_path / "archive", with_script=False)
    served = archive_server(arc.dir)
    with pytest.raises(NotFoundError, match="hold no script/"):
        stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)
    assert not any(n.endswith(".asdm.sdm.tar") for n in served.stats()["requests"])


def test_a_package_member_outside_the_package_folders_is_refused(tmp_path, archive_server):
    # Decision: a package tar may hold script/ calibration/ qa/ qa2/ log/ product/ and the README;
    # raw/ (or anything else) inside it is refused, as in any product tar.
    arc = package(tmp_path / "archive", parts=1, extra={"raw/uid___A002_X1_X2.asdm.sdm/ASDM.xml": b"<ASDM/>"})
    served = archive_server(arc.dir)
    with pytest.raises(HostileTarError, match="outside"):
        stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)


# ---------------------------------------------------------------- ASDM tars without the project prefix
# The old request handler served raw ASDMs as `uid___A002_X..._X....asdm.sdm.tar`, no `<project>_`
# (its download scripts, kept in astroquery's test data: downloadRequest786572566script.sh); the
# DataLink service names them `<project>_uid___....asdm.sdm.tar`. Other forms those test data show
# (README, `_auxiliary.tar`, `_<n>_of_<N>.tar`, Cycle 0's dated tars) are covered above and in
# test_staging_http. Expected: a bare name is the listing's project's EB, staged as the prefixed one.

def bare_asdm_names(arc):
    """The archive with its ASDM tars renamed without the project prefix."""
    for eb in arc.ebs:
        prefixed = naming.asdm_tar(arc.project, eb)
        bare = f"{naming.uid_to_file(eb)}.asdm.sdm.tar"
        arc.path(prefixed).rename(arc.path(bare))
        arc.files[bare] = arc.files.pop(prefixed)
    return arc


def test_classify_takes_bare_asdm_tar_names():
    from alma_regen.staging.datalink import RemoteFile
    from alma_regen.staging.stage import classify
    p, m = PROJECT, naming.uid_to_file(MOUS)
    first, second = (naming.uid_to_file(e) for e in EBS)
    files = [RemoteFile(f"{p}_{m}_001_of_001.tar", 10, "u1", "#this"),
             RemoteFile(f"{first}.asdm.sdm.tar", 20, "u2", "#progenitor"),
             RemoteFile(f"{second}.asdm.sdm.tar", 30, "u3", "#progenitor"),
             RemoteFile(f"{p}_{second}.asdm.sdm.tar", 31, "u4", "#progenitor"),
             RemoteFile(f"2099.1.00001.S_{second}.asdm.sdm.tar", 32, "u5", "#progenitor"),
             RemoteFile(f"x{first}.asdm.sdm.tar", 40, "u6", "#progenitor")]
    listing = classify(files, MOUS)
    # Decision: the bare name of EB 1 is taken; EB 2's prefixed name wins over its bare one; another
    # project's tar and a name that is neither form are not this MOUS's.
    assert {eb: f.name for eb, f in listing.asdms.items()} == {
        EBS[0]: f"{first}.asdm.sdm.tar", EBS[1]: f"{p}_{second}.asdm.sdm.tar"}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    return bare_asdm_names(ab.build_archive(tmp_path_factory.mktemp("bare") / "archive", PROJECT, MOUS, EBS,
                                            n_binaries=2, binary_size=20_000))


def check_bare_staged(arc, workdir, summary):
    assert summary["ebs"] == list(EBS) and summary["missing_ebs"] == []
    assert {f["file"] for f in summary["files"] if f["kind"] == "asdm"} == {
        f"{naming.uid_to_file(eb)}.asdm.sdm.tar" for eb in EBS}
    assert ab.staged_member(member_path(workdir, MOUS)) == ab.expected_member(arc)


def test_bare_asdm_tars_stage_from_http(tmp_path, bare, archive_server):
    served = archive_server(bare.dir)
    summary = stage_mous(MOUS, HttpSource(served.url), tmp_path / "work", FAST)
    check_bare_staged(bare, tmp_path / "work", summary)


def test_bare_asdm_tars_stage_from_s3(tmp_path, bare, seaweedfs):
    bucket = seaweedfs.bucket("bare")
    ab.upload(bare, seaweedfs.client(), bucket, "mirror")
    summary = stage_mous(MOUS, S3Source(f"s3://{bucket}/mirror", seaweedfs.client(), workers=1),
                         tmp_path / "work", FAST)
    check_bare_staged(bare, tmp_path / "work", summary)
