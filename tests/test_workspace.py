"""The working space after a verified publish (issue 13 item 3): what each keep value removes,
links never followed, nothing removed unless published and verified and locked by the caller.

A small member folder is built here (no CASA): a fake FITS in imaging/products is all
`publish.publish` needs, and it goes to the real SeaweedFS of the `seaweedfs` fixture.
"""
import json
import os
from pathlib import Path

import pytest

from alma_regen import cli, mous_lock, s3, workspace
from alma_regen.products import publish
from alma_regen.config import InvalidSetting, Settings
from alma_regen.errors import PermanentError
from alma_regen.mous_lock import MousBusy

MOUS = "uid://A001/X3001/X9"
MEMBER = "member.uid___A001_X3001_X9"
# (path, bytes) of every regular file of the member folder.
FILES = {
    "member.uid___A001_X3001_X9.README.txt": 40,
    ".2019.1.00001.S_uid___A001_X3001_X9_auxiliary.tar.staged.json": None,  # JSON, sized below
    "raw/uid___A002_X1_X1.asdm.sdm/ASDMBinary/uid___A002_X1_X1_X1": 5000,
    "raw/uid___A002_X1_X1.asdm.sdm/Main.xml": 300,
    "raw/.uid___A002_X1_X1.asdm.sdm.staged.json": None,
    "script/member.uid___A001_X3001_X9.scriptForPI.py": 70,
    "script/PPR_uid___A001_X3001_X9.xml": 50,
    "calibration/uid___A002_X1_X1.ms.bandpass.tbl/table.dat": 900,
    "calibration/member.uid___A001_X3001_X9.hifa_calimage.pipeline_manifest.xml": 60,
    "qa/uid___A001_X3001_X9.qa2_report.html": 30,
    "log/member.uid___A001_X3001_X9.hifa_calimage.casa_commands.log": 20,
    "product/member.uid___A001_X3001_X9.J1_sci.spw5.cont.I.pbcor.fits": 800,
    "calibrated/working/uid___A002_X1_X1.ms/table.f1": 7000,
    "calibrated/working/casa-20260101-000000.log": 100,
    "calibrated/calibration.json": None,
    "imaging/products/J1.spw5.cont.I.pbcor.fits": 3000,
    "imaging/imaging.json": None,
    "imaging/fidelity_work/derived/x.fits": 1200,
    ".alma-regen-step": None,
}
STAMP = {"file": "x.tar", "size": 1, "sha256": "0" * 64, "source": "test", "kind": "auxiliary"}
SMALL_JSON = {".alma-regen-step": {"step": "publish", "run_id": "r"},
              "calibrated/calibration.json": {"engine": "test-restore"},
              "imaging/imaging.json": {"engine": "native", "seconds": 1.0}}


def build_member(tmp_path: Path) -> tuple[Path, Path, dict]:
    """<tmp>/work/member.<MOUS> as a run leaves it, and a folder outside it that links point to."""
    member = tmp_path / "work" / MEMBER
    sizes = {}
    for rel, size in FILES.items():
        p = member / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if size is None:
            p.write_text(json.dumps(STAMP if rel.endswith(".staged.json") else SMALL_JSON[rel]))
        else:
            p.write_bytes(os.urandom(size))
        sizes[rel] = p.stat().st_size
    # A link into the member folder (as scriptForPI leaves calibrated/<EB>.ms.split.cal) and
    # two out of it: one to a folder (a shared cache), one at top level.
    os.symlink("working/uid___A002_X1_X1.ms", member / "calibrated" / "uid___A002_X1_X1.ms.split.cal")
    outside = tmp_path / "outside"
    (outside / "cache").mkdir(parents=True)
    (outside / "cache" / "big.bin").write_bytes(os.urandom(4096))
    os.symlink(outside / "cache", member / "calibrated" / "shared_cache")
    os.symlink(outside, member / "scratch")
    # A hard link is counted once.
    os.link(member / "calibrated/working/casa-20260101-000000.log", member / "calibrated/casa.log")
    return member, outside, sizes


def under(sizes: dict, top: str) -> int:
    return sum(v for k, v in sizes.items() if k == top or k.startswith(top + "/"))


def tree(folder: Path) -> dict:
    """{relative path: size or link target} of everything below `folder`, links not followed."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = os.readlink(p) if p.is_symlink() else \
                (p.stat().st_size if p.is_file() else "dir")
    return out


@pytest.fixture
def member(tmp_path):
    return build_member(tmp_path)


@pytest.fixture
def products(seaweedfs, monkeypatch):
    """A fresh bucket, and the environment s3.s3_client() and the CLI read."""
    env = seaweedfs.env()
    monkeypatch.setenv(s3.ENDPOINT_ENV, env.pop("AWS_ENDPOINT_URL"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return seaweedfs.client(), f"s3://{seaweedfs.bucket('ws')}/regen"


def publish_member(member: Path, to: str, client, run: str = "r1") -> dict:
    return publish.publish(member, to, run=run, client=client, workers=2)


# ------------------------------------------------------------------ the plan

def test_the_plan_for_each_keep_value(member):
    m, outside, sizes = member
    before = tree(m)
    assert workspace.plan_clean(m, "all").remove == []

    raw = workspace.plan_clean(m, "raw")
    assert raw.mous == MOUS and not raw.whole
    assert {e.name: e.kind for e in raw.remove} == {".alma-regen-step": "file", "calibrated": "dir",
                                                    "imaging": "dir", "scratch": "link"}
    got = {e.name: e.bytes for e in raw.remove}
    # calibrated/: its own files once (the hard link not twice), the links not followed.
    assert got["calibrated"] == under(sizes, "calibrated") and got["scratch"] == 0
    assert got["imaging"] == under(sizes, "imaging")
    assert raw.total_bytes == sum(got.values())
    assert sorted(raw.kept) == sorted([".2019.1.00001.S_uid___A001_X3001_X9_auxiliary.tar.staged.json",
                                       "calibration", "log", "member.uid___A001_X3001_X9.README.txt",
                                       "product", "qa", "raw", "script"])

    nothing = workspace.plan_clean(m, "nothing")
    assert nothing.whole and nothing.kept == []
    assert sorted(e.name for e in nothing.remove) == sorted(p.name for p in m.iterdir())
    assert nothing.total_bytes == sum(sizes.values())
    assert tree(m) == before, "planning touched the folder"

    with pytest.raises(PermanentError, match="keep must be one of all, raw, nothing"):
        workspace.plan_clean(m, "everything")
    with pytest.raises(PermanentError, match="not a member"):
        workspace.plan_clean(outside, "raw")


def test_the_setting_is_checked_in_one_line():
    assert Settings().workspace_keep == "all"
    assert Settings.from_env({"ALMA_REGEN_WORKSPACE_KEEP": "raw"}).workspace_keep == "raw"
    with pytest.raises(InvalidSetting, match=r"^setting workspace_keep must be one of all, raw, nothing, not 'raws'$"):
        Settings.from_env({"ALMA_REGEN_WORKSPACE_KEEP": "raws"})
    with pytest.raises(InvalidSetting):
        Settings().with_overrides({"workspace_keep": "none"})


# ------------------------------------------------------------------ cleaning

def test_raw_keeps_what_a_rerun_needs_and_links_are_not_followed(member, products):
    m, outside, sizes = member
    client, to = products
    manifest = publish_member(m, to, client)
    holder = ("alma_regenerate", "run-1")
    mous_lock.acquire(m.parent, MOUS, *holder)
    kept_before = {k: v for k, v in tree(m).items() if k.split("/")[0] not in ("calibrated", "imaging", "scratch",
                                                                                ".alma-regen-step")}
    plan = workspace.plan_clean(m, "raw")
    result = workspace.clean(plan, manifest=manifest, holder=holder)
    assert result["removed"] == [".alma-regen-step", "calibrated", "imaging", "scratch"]
    assert result["bytes_freed"] == under(sizes, "calibrated") + under(sizes, "imaging") + \
        sizes[".alma-regen-step"]
    after = tree(m)
    # The stamp that makes the folder an entry of the raw cache (evicted by LRU under a quota).
    assert json.loads((m / workspace.CACHED).read_text())["mous_uid"] == MOUS
    assert {k: v for k, v in after.items() if k != workspace.CACHED} == kept_before
    # The targets of the links survive, with their bytes.
    assert (outside / "cache" / "big.bin").stat().st_size == 4096
    assert "removed .alma-regen-step, calibrated, imaging, scratch" in workspace.summary(result, m)


def test_nothing_removes_the_member_folder_but_not_link_targets(member, products):
    m, outside, sizes = member
    client, to = products
    manifest = publish_member(m, to, client)
    holder = ("alma_regenerate", "run-2")
    mous_lock.acquire(m.parent, MOUS, *holder)
    result = workspace.clean(workspace.plan_clean(m, "nothing"), manifest=manifest, holder=holder)
    assert not m.exists() and result["whole_folder"] and result["bytes_freed"] == sum(sizes.values())
    assert (outside / "cache" / "big.bin").stat().st_size == 4096 and (outside / "cache").is_dir()
    # The lock lives beside the member folder, not in it.
    assert mous_lock.lock_path(m.parent, MOUS).is_file()


def test_nothing_is_removed_unless_published_and_verified(member, products):
    m, _, _ = member
    client, to = products
    holder = ("alma_regenerate", "run-3")
    mous_lock.acquire(m.parent, MOUS, *holder)
    before = tree(m)
    plan = workspace.plan_clean(m, "nothing")
    with pytest.raises(workspace.NotPublished, match="no manifest"):
        workspace.clean(plan, manifest=None, holder=holder)
    manifest = publish_member(m, to, client)
    unverified = json.loads(json.dumps(manifest))
    unverified["outputs"][0].pop("verified", None)
    unverified["outputs"][0].pop("reused", None)
    with pytest.raises(workspace.NotPublished, match="1 output.s. not verified"):
        workspace.clean(plan, manifest=unverified, holder=holder)
    with pytest.raises(workspace.NotPublished, match="not of uid://A001/X3001/X9"):
        workspace.clean(plan, manifest=dict(manifest, mous_uid="uid://A001/X3001/X10"), holder=holder)
    # An image made after the publish is not in the manifest: it would be lost.
    (m / "imaging" / "products" / "J1.spw5.cont.I.pbcor.fits").write_bytes(os.urandom(3001))
    with pytest.raises(workspace.NotPublished, match="does not hold the images now in"):
        workspace.clean(workspace.plan_clean(m, "raw"), manifest=manifest, holder=holder)
    before["imaging/products/J1.spw5.cont.I.pbcor.fits"] = 3001
    assert tree(m) == before


def test_nothing_is_removed_while_another_holds_the_lock(member, products):
    m, _, _ = member
    client, to = products
    manifest = publish_member(m, to, client)
    plan = workspace.plan_clean(m, "nothing")
    before = tree(m)
    with pytest.raises(workspace.NotLocked, match="held by nobody"):
        workspace.clean(plan, manifest=manifest, holder=("alma_regenerate", "mine"))
    mous_lock.acquire(m.parent, MOUS, "alma_regenerate", "theirs")
    with pytest.raises(workspace.NotLocked, match="held by run theirs of alma_regenerate"):
        workspace.clean(plan, manifest=manifest, holder=("alma_regenerate", "mine"))
    assert tree(m) == before


# ------------------------------------------------------------------ the command

def run_cli(capsys, *args):
    code = cli.main(["clean", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dry_run_lists_and_removes_nothing_then_yes_removes(member, products, capsys):
    m, outside, sizes = member
    client, to = products
    publish_member(m, to, client, run="first")
    manifest = publish_member(m, to, client, run="second")  # latest.json names this one
    before = tree(m)
    code, out, err = run_cli(capsys, m, "--keep", "raw", "--products", to)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5 and all(ln.startswith("would remove") for ln in lines[:-1])
    assert [ln.split()[-1] for ln in lines[:3]] == [str(m / n) for n in (".alma-regen-step", "calibrated", "imaging")]
    assert lines[1].split()[2:4] == workspace.human(under(sizes, "calibrated")).split()
    assert lines[3].endswith(f"{m / 'scratch'}  (link only)")
    assert lines[-1].startswith("would free ") and "4 path(s)" in lines[-1] and "--yes" in lines[-1]
    assert manifest["location"] in lines[-1]
    assert tree(m) == before
    assert not mous_lock.lock_path(m.parent, MOUS).exists(), "the command left the lock behind"

    code, out, err = run_cli(capsys, m, "--keep", "raw", "--products", to, "--yes")
    assert code == 0, err
    freed = under(sizes, "calibrated") + under(sizes, "imaging") + sizes[".alma-regen-step"]
    assert out.splitlines()[-1] == f"freed {workspace.human(freed)} in 4 path(s) (keep=raw)"
    assert sorted(p.name for p in m.iterdir()) == sorted(workspace.plan_clean(m, "raw").kept)
    assert (outside / "cache" / "big.bin").is_file()

    code, out, err = run_cli(capsys, m, "--keep", "nothing", "--products", to, "--yes")
    assert code == 0, err
    assert not m.exists() and (outside / "cache" / "big.bin").is_file()


def test_cli_refuses_an_unpublished_mous(member, products, capsys):
    m, _, _ = member
    _, to = products
    before = tree(m)
    for extra in ([], ["--yes"]):
        code, out, err = run_cli(capsys, m, "--keep", "nothing", "--products", to, *extra)
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [f"alma-regen clean: error: {MOUS} is not published under {to} "
                                            "(no latest.json with a manifest): nothing removed"]
    assert tree(m) == before


def test_cli_refuses_while_a_run_holds_the_mous(member, products, capsys):
    m, _, _ = member
    client, to = products
    publish_member(m, to, client)
    mous_lock.acquire(m.parent, MOUS, "alma_regenerate", "uid___A001_X3001_X9__20260101T000000")
    before = tree(m)
    code, out, err = run_cli(capsys, m, "--keep", "nothing", "--products", to, "--yes")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "is being regenerated by run uid___A001_X3001_X9__20260101T000000" \
        in err and "Traceback" not in err
    assert tree(m) == before


# ------------------------------------------------------------------ the publish step of the DAG

def _operator_env(seaweedfs, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_PRODUCTS_S3", json.dumps(
        {"conn_type": "aws", "login": seaweedfs.access_key, "password": seaweedfs.secret_key,
         "extra": {"endpoint_url": seaweedfs.endpoint_url, "region_name": seaweedfs.region}}))


class _Run:
    """The two attributes of the DAG run the operator reads."""
    def __init__(self, dag_id, run_id):
        self.dag_id, self.run_id = dag_id, run_id


def test_the_publish_step_cleans_after_a_verified_publish_while_it_holds_the_lock(member, seaweedfs, monkeypatch):
    from alma_regen.airflow.operators.publish import PublishOperator
    m, outside, sizes = member
    _operator_env(seaweedfs, monkeypatch)
    monkeypatch.setenv("ALMA_REGEN_WORKSPACE_KEEP", "all")
    bucket = seaweedfs.bucket("wsop")
    run = _Run("alma_regenerate", "uid___A001_X3001_X9__20260101T000001")
    mous_lock.acquire(m.parent, MOUS, run.dag_id, run.run_id)
    op = PublishOperator(task_id="publish", member_dir=str(m), to=f"s3://{bucket}/regen", workers=2)
    # The param wins over the setting (all).
    result = op.execute({"run_id": run.run_id, "dag_run": run, "params": {"keep": "raw"}})
    assert result["workspace"]["removed"] == [".alma-regen-step", "calibrated", "imaging", "scratch"]
    assert result["workspace"]["bytes_freed"] == under(sizes, "calibrated") + under(sizes, "imaging") + \
        sizes[".alma-regen-step"]
    assert not (m / "calibrated").exists() and (m / "raw").is_dir() and (outside / "cache" / "big.bin").is_file()


def test_the_publish_step_follows_the_setting_and_never_cleans_without_publishing(member, seaweedfs, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from alma_regen.airflow.operators.publish import PublishOperator
    m, _, _ = member
    _operator_env(seaweedfs, monkeypatch)
    run = _Run("alma_regenerate", "uid___A001_X3001_X9__20260101T000002")
    mous_lock.acquire(m.parent, MOUS, run.dag_id, run.run_id)
    before = tree(m)
    monkeypatch.setenv("ALMA_REGEN_WORKSPACE_KEEP", "nothing")
    unpublished = PublishOperator(task_id="publish", member_dir=str(m), to="")
    with pytest.raises(AirflowSkipException, match="working space is kept"):
        unpublished.execute({"run_id": run.run_id, "dag_run": run, "params": {"keep": "nothing"}})
    assert tree(m) == before
    # The default param ("setting") reads the setting; the default setting keeps everything.
    monkeypatch.setenv("ALMA_REGEN_WORKSPACE_KEEP", "all")
    op = PublishOperator(task_id="publish", member_dir=str(m), to=f"s3://{seaweedfs.bucket('wsop')}/regen",
                         workers=2)
    result = op.execute({"run_id": run.run_id, "dag_run": run, "params": {"keep": "setting"}})
    assert result["workspace"] == {"keep": "all", "removed": [], "bytes_freed": 0}
    assert tree(m) == before


def test_the_publish_step_does_not_clean_when_another_run_holds_the_lock(member, seaweedfs, monkeypatch):
    from alma_regen.airflow.operators.publish import PublishOperator
    m, _, _ = member
    _operator_env(seaweedfs, monkeypatch)
    monkeypatch.setenv("ALMA_REGEN_WORKSPACE_KEEP", "nothing")
    mous_lock.acquire(m.parent, MOUS, "alma_regenerate", "another")
    before = tree(m)
    run = _Run("alma_regenerate", "uid___A001_X3001_X9__20260101T000003")
    op = PublishOperator(task_id="publish", member_dir=str(m), to=f"s3://{seaweedfs.bucket('wsop')}/regen",
                         workers=2)
    result = op.execute({"run_id": run.run_id, "dag_run": run, "params": {}})
    assert result["run"] and result["workspace"]["removed"] == []
    assert "held by run another" in result["workspace"]["error"]
    assert tree(m) == before


def test_a_bad_keep_fails_before_anything_is_uploaded(member, seaweedfs, monkeypatch):
    from alma_regen.airflow.operators.publish import PublishOperator
    m, _, _ = member
    _operator_env(seaweedfs, monkeypatch)
    bucket = seaweedfs.bucket("wsop")
    op = PublishOperator(task_id="publish", member_dir=str(m), to=f"s3://{bucket}/regen")
    with pytest.raises(PermanentError, match="keep must be one of"):
        op.execute({"run_id": "r", "params": {"keep": "most"}})
    assert seaweedfs.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# ------------------------------------------------------------------ the raw cache (keep=raw, with a quota)

def test_the_raw_cache_evicts_the_least_recently_used_and_never_what_is_in_use(member, products, capsys):
    import shutil
    m, _, _ = member
    client, to = products
    holder = ("alma_regenerate", "run-1")
    mous_lock.acquire(m.parent, MOUS, *holder)
    workspace.clean(workspace.plan_clean(m, "raw"), manifest=publish_member(m, to, client), holder=holder)
    mous_lock.release(m.parent, MOUS, *holder)
    # Copies of the cleaned folder stand for other MOUSs cleaned earlier (their stamps' times).
    work = m.parent
    names = {"XA": 100, "XB": 200, "XC": 50, "XD": 10}
    for suffix, used in names.items():
        shutil.copytree(m, work / f"member.uid___A001_X3001_{suffix}", symlinks=True)
    (work / "member.uid___A001_X3001_XC" / ".alma-regen-step").write_text("{}")  # a run works in XC again
    mous_lock.acquire(work, "uid://A001/X3001/XD", "alma_regenerate", "busy")    # and one holds XD
    for suffix, used in names.items():
        os.utime(work / f"member.uid___A001_X3001_{suffix}" / workspace.CACHED, (used, used))
    cache = workspace.raw_cache(work)
    # XC is not a cache entry (a run works there); least recently used first.
    assert [c.member.name[-2:] for c in cache] == ["XD", "XA", "XB", "X9"]
    size = cache[0].bytes
    assert size > 5000 and all(c.bytes == size for c in cache)
    # Dry run: the quota of two entries would take the two oldest.
    assert [c.member.name[-2:] for c in workspace.evict(work, 2 * size, dry_run=True)] == ["XD", "XA"]
    assert len(workspace.raw_cache(work)) == 4
    # For real: XD is in use (its lock is held) and stays; XA and XB go.
    gone = workspace.evict(work, 2 * size)
    assert [c.member.name[-2:] for c in gone] == ["XA", "XB"]
    assert sorted(p.name[-2:] for p in work.glob("member.*")) == ["X9", "XC", "XD"]
    # The command line: lists, and with --yes removes, down to its quota.
    mous_lock.release(work, "uid://A001/X3001/XD", "alma_regenerate", "busy")
    def raw_cache_cli(*args):
        assert cli.main(["raw-cache", str(work), "--quota-gb", str(size / 1e9 * 1.5), *args]) == 0
        return capsys.readouterr().out
    out = raw_cache_cli()
    assert "raw cache: 2 member folder(s)" in out and "would remove" in out and "XD" in out
    assert (work / "member.uid___A001_X3001_XD").is_dir()
    out = raw_cache_cli("--yes")
    assert "removed" in out and not (work / "member.uid___A001_X3001_XD").exists()
    assert (work / MEMBER).is_dir() and (work / "member.uid___A001_X3001_XC").is_dir()


def test_the_publish_step_shrinks_its_reservation_to_what_is_left(member, seaweedfs, monkeypatch):
    from alma_regen import admission
    from alma_regen.airflow.operators.publish import PublishOperator
    m, _, sizes = member
    _operator_env(seaweedfs, monkeypatch)
    run = _Run("alma_regenerate", "uid___A001_X3001_X9__20260101T000009")
    mous_lock.acquire(m.parent, MOUS, run.dag_id, run.run_id)
    admission.reserve(m.parent, run.run_id, MOUS, 10**9)
    op = PublishOperator(task_id="publish", member_dir=str(m), to=f"s3://{seaweedfs.bucket('wsop')}/regen", workers=2)
    op.execute({"run_id": run.run_id, "dag_run": run, "params": {"keep": "raw"}})
    left = admission.entries(m.parent)[run.run_id]["bytes"]
    assert left == admission.usage(m) and 0 < left < 10**9
