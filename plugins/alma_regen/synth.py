"""`alma-regen synth`: a small, realistic ALMA delivery made with real CASA.

The CASA half (simulate, corrupt, export ASDMs, calibrate as the pipeline
does, image) runs in a child process: include/casa_scripts/synth_delivery.py.
This half chooses the names and the truth from the seed, writes the text
files of a pipeline delivery (scripts, PPR, README, pipeline manifest) and
packs everything exactly as the archive serves it under OUT/archive/.
Real ALMA data cannot be downloaded here; with this, regeneration is
checkable against truth.
"""
import json
import logging
import shutil
import sys
import tarfile
import time
from pathlib import Path

from . import naming
from .casa.runner import CasaRunner
from .errors import PermanentError
from .paths import casa_script

log = logging.getLogger(__name__)

CASA_LINE = "CASA version used for reduction: {casa}"


def make_spec(seed: int, ebs: int, antennas: int, member_dir: Path) -> dict:
    """Names and truth, all derived from the seed (same seed, same delivery)."""
    if not 1 <= ebs <= 50:
        raise PermanentError(f"--ebs must be between 1 and 50, not {ebs}")
    if not 4 <= antennas <= 40:
        raise PermanentError(f"--antennas must be between 4 and 40, not {antennas}")
    project = f"2023.1.{seed % 100000:05d}.S"
    mous = f"uid://A001/X{0x3000 + seed % 0x1000:x}/X{0x133 + seed % 0x100:x}"
    group = f"uid://A001/X{0x3000 + seed % 0x1000:x}/X{0x131 + seed % 0x100:x}"
    goal = f"uid://A001/X{0x3000 + seed % 0x1000:x}/X{0x12f + seed % 0x100:x}"
    eb_uids = [f"uid://A002/X{0xb4264b + seed * 16 + i:x}/X{0x47af + 0x2f * i:x}" for i in range(ebs)]
    # Integration time and noise scale with the EB count so a delivery stays small.
    return {
        "seed": seed,
        "project": project,
        "mous": mous,
        "mous_file": naming.uid_to_file(mous),
        "group": group,
        "science_goal": goal,
        "member_dir": str(member_dir),
        "antennas": antennas,
        "antenna_config": "alma.cycle10.1.cfg",
        "refant": 2,
        "date": "2024/05/01/00:00:00",
        "date_iso": "2024-05-01T00:00:00",
        "integration_s": 6,
        "slew_s": 10,
        # Calibrator, target, calibrator, target, calibrator: the phase
        # calibrator brackets every target scan.
        "scans": [["calibrator", 60], ["target", 120], ["calibrator", 60], ["target", 120], ["calibrator", 60]],
        "ref_freq_ghz": 230.0,
        "spws": [
            {"name": "X1#BB_1#SW-01#FULL_RES", "freq_ghz": 230.0, "width_mhz": 31.25, "nchan": 8},
            {"name": "X1#BB_2#SW-01#FULL_RES", "freq_ghz": 232.0, "width_mhz": 31.25, "nchan": 8},
            # A one-channel window, as ALMA's channel-average windows: not science.
            {"name": "X1#BB_3#SW-01#CH_AVG", "freq_ghz": 245.0, "width_mhz": 1875.0, "nchan": 1},
        ],
        "calibrator": {"name": "J1924-2914", "ra": "19h24m51.056s", "dec": "-29d14m30.12s",
                       "flux_jy": 1.30, "spix": -0.7},
        "target": {
            "name": "TW_Hya_synth",
            "ra": "19h10m00.000s", "dec": "-27d00m00.00s",
            "sources": [
                {"name": "A", "ra": "19h10m00.150s", "dec": "-26d59m58.50s", "flux_jy": 0.25},
                {"name": "B", "ra": "19h09m59.750s", "dec": "-27d00m03.00s", "flux_jy": 0.10},
            ],
        },
        "noise_jy": 0.05,
        "expected_rms_jy": 0.0005,
        "rfi": {"antenna": 5, "amp_jy": 40.0},
        "ebs": [{"uid": u, "seed": seed * 1000 + i, "hour_angle_s": -3600 + 2400 * i}
                for i, u in enumerate(eb_uids)],
    }


def _python_for_casa() -> str:
    # The modular CASA of requirements.txt lives in this interpreter's environment.
    return sys.executable


def synthesize(out, ebs: int = 2, seed: int = 1, antennas: int = 8, runner: CasaRunner | None = None) -> dict:
    """Build OUT/archive/ (and OUT/delivery/, the untarred member) and describe it."""
    out = Path(out).resolve()
    t0 = time.monotonic()
    scratch = out / "scratch"
    delivery = out / "delivery"
    for d in (scratch, delivery, out / "archive", out / "truth"):
        shutil.rmtree(d, ignore_errors=True)
    spec = make_spec(seed, ebs, antennas, delivery / naming.member_dir("uid://A001/X1/X1"))
    member = delivery / naming.member_dir(spec["mous"])
    spec["member_dir"] = str(member)
    spec["truth_dir"] = str(out / "truth")
    scratch.mkdir(parents=True)
    (scratch / "spec.json").write_text(json.dumps(spec, indent=1))
    runner = runner or CasaRunner(log)
    run = runner.run([_python_for_casa(), casa_script("synth_delivery.py"), "spec.json", "result.json"], cwd=scratch)
    result = json.loads((scratch / "result.json").read_text())
    casa_version = result["casa_version"]
    write_text_files(spec, member, casa_version, result["imaging_calls"])
    files = pack_archive(spec, member, out / "archive")
    shutil.rmtree(scratch)
    ebs_truth = {e["uid"]: e for e in result["ebs"]}
    return {
        "mous_uid": spec["mous"],
        "project": spec["project"],
        "ebs": [e["uid"] for e in spec["ebs"]],
        "files": files,
        "archive_dir": str(out / "archive"),
        "member_dir": str(member),
        "casa_version": casa_version,
        "seed": seed,
        "truth": {
            "calibrator": {k: spec["calibrator"][k] for k in ("name", "ra", "dec", "flux_jy", "spix")},
            "ref_freq_ghz": spec["ref_freq_ghz"],
            "target": spec["target"],
            "noise_jy_per_visibility_component": spec["noise_jy"],
            "science_spws": [i for i, s in enumerate(spec["spws"]) if s["nchan"] > 4],
            "spws": spec["spws"],
            "ebs": ebs_truth,
            "longest_baseline_m": result["longest_baseline_m"],
            # True visibilities per EB (time, antennas, model per spw), for checks.
            "model_dir": str(out / "truth"),
        },
        "products": result["products"],
        "seconds": round(time.monotonic() - t0, 1),
        "casa_seconds": run.duration_s,
        "casa_peak_mb": run.max_rss_mb,
    }


# ---------------------------------------------------------------- text files

def ebs_of(spec):
    return [naming.uid_to_file(e["uid"]) for e in spec["ebs"]]


def write_text_files(spec, member: Path, casa_version: str, imaging_calls: list):
    mous_f = spec["mous_file"]
    script = member / "script"
    cal = member / "calibration"
    for d in (script, cal, member / "log", member / "qa"):
        d.mkdir(parents=True, exist_ok=True)
    ebs = ebs_of(spec)
    readme = README.format(mous=spec["mous"], project=spec["project"], casa=casa_version)
    (member / naming.readme_name(spec["mous"])).write_text(readme)
    (script / f"PPR_{mous_f}.xml").write_text(ppr_xml(spec))
    (script / f"member.{mous_f}.scriptForPI.py").write_text(SCRIPT_FOR_PI)
    (script / f"member.{mous_f}.hifa_calimage.casa_piperestorescript.py").write_text(restore_script(ebs))
    (script / f"member.{mous_f}.hifa_calimage.casa_pipescript.py").write_text(pipescript(ebs))
    (script / f"member.{mous_f}.scriptForImaging.py").write_text(imaging_script(spec, ebs, imaging_calls))
    (cal / f"{mous_f}.pipeline_manifest.xml").write_text(pipeline_manifest(spec, casa_version))
    c = spec["calibrator"]
    flux = ["field,spw,I,Q,U,V,spix,uvmin,uvmax,comment"]
    for eb in ebs:
        for i, _ in enumerate(spec["spws"]):
            flux.append(f"{c['name']},{i},{c['flux_jy']:.4f},0,0,0,{c['spix']},0.0,0.0,\"# {eb}\"")
    (cal / "flux.csv").write_text("\n".join(flux) + "\n")
    (member / "qa" / f"{mous_f}.qa2_report.html").write_text(
        f"<html><body><h1>QA2 report {spec['mous']}</h1><p>{CASA_LINE.format(casa=casa_version)}</p>"
        "<p>Synthetic delivery made by alma-regen synth.</p></body></html>\n")
    (member / "log" / f"member.{mous_f}.hifa_calimage.casa_commands.log").write_text(
        "# synthetic delivery: the calibration commands are in calibration/*.calapply.txt\n")


README = """ALMA data delivery README (synthetic: made by alma-regen synth)

Member ObsUnitSet: {mous}
Project: {project}

CASA version used for reduction: {casa}
Calibrated the pipeline's way by alma-regen synth with modular CASA (see calibration/*.pipeline_manifest.xml).

Directory structure:
  raw/          the raw data (ASDMs), from the request handler
  script/       scriptForPI.py restores the calibrated data; scriptForImaging.py makes the images
  calibration/  calibration tables, flag versions and apply files
  product/      the images made by the observatory
"""


def ppr_xml(spec) -> str:
    datasets = "\n".join(
        f"""      <DataSet>
        <RelativePath>{spec['project']}/science_goal.{naming.uid_to_file(spec['science_goal'])}/group.{naming.uid_to_file(spec['group'])}/member.{spec['mous_file']}</RelativePath>
        <SchedBlockRef entityId="uid://A001/X3000/X1" partId="X00000000" entityTypeName="SchedBlock" documentVersion="1"/>
        <SessionRef entityId="uid://A001/X3000/X1" partId="X1" entityTypeName="SchedBlock" documentVersion="1"/>
        <AsdmIdentifier>
          <AsdmRef><ExecBlockId>{e['uid']}</ExecBlockId></AsdmRef>
          <AsdmDiskName>{naming.uid_to_file(e['uid'])}</AsdmDiskName>
        </AsdmIdentifier>
      </DataSet>""" for e in spec["ebs"])
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SciPipeRequest>
  <ProjectSummary>
    <ProposalCode>{spec['project']}</ProposalCode>
  </ProjectSummary>
  <ProjectStructure>
    <ObsUnitSetRef entityId="{spec['mous']}" partId="X00000000" entityTypeName="ObsProject" documentVersion="1"/>
  </ProjectStructure>
  <ProcessingRequests>
    <RootDirectory>/lustre/alma/pipeline</RootDirectory>
    <ProcessingRequest>
      <ProcessingProcedure>
        <ProcedureTitle>hifa_calimage</ProcedureTitle>
      </ProcessingProcedure>
{datasets}
    </ProcessingRequest>
  </ProcessingRequests>
</SciPipeRequest>
"""


def restore_script(ebs) -> str:
    vis = ", ".join(repr(e) for e in ebs)
    sessions = ", ".join(repr("session_1") for _ in ebs)
    return f"""from recipes.almahelpers import fixsyscaltimes # SACM/JAO - Fixes
__rethrow_casa_exceptions = True
h_init()
try:
    hifa_restoredata (vis=[{vis}], session=[{sessions}], ocorr_mode='ca')
finally:
    h_save()
"""


def pipescript(ebs) -> str:
    vis = ", ".join(repr(e) for e in ebs)
    return f"""from recipes.almahelpers import fixsyscaltimes # SACM/JAO - Fixes
__rethrow_casa_exceptions = True
context = h_init()
context.set_state('ProjectSummary', 'proposal_code', 'synthetic')
try:
    hifa_importdata(vis=[{vis}], dbservice=False)
    fixsyscaltimes(vis='{ebs[0]}.ms')
    hifa_flagdata()
    hifa_fluxcalflag()
    hif_rawflagchans()
    hif_refant()
    h_tsyscal()
    hifa_tsysflag()
    hifa_antpos()
    hifa_wvrgcalflag()
    hif_lowgainflag()
    hif_setmodels()
    hifa_bandpassflag()
    hifa_spwphaseup()
    hifa_gfluxscaleflag()
    hifa_gfluxscale()
    hifa_timegaincal()
    hif_applycal()
    hifa_imageprecheck()
    hif_makeimlist(intent='PHASE,BANDPASS,CHECK')
    hif_makeimages()
    hifa_exportdata()
finally:
    h_save()
"""


def imaging_script(spec, ebs, calls) -> str:
    """A manual imaging script as a data reducer writes one: the tclean calls that
    made product/, on the split MSs, the first one with interactive masking."""
    vis = ", ".join(repr(f"{e}.ms.split.cal") for e in ebs)
    lines = [f"# ALMA Data Reduction Script: imaging of {spec['mous']}",
             "# Run in calibrated/ after scriptForPI.py.", "import os", "",
             "thesteps = [0, 1]", f"vislist = [{vis}]", ""]
    for n, call in enumerate(calls):
        name = call["imagename"]
        args = ", ".join(f"{k}={v!r}" for k, v in call["params"].items())
        lines += [f"# {name}",
                  f"os.system('rm -rf {name}.*')",
                  f"tclean(vis=vislist, imagename={name!r}, {args}, interactive={n == 0})",
                  f"exportfits(imagename={name + '.image.pbcor'!r}, fitsimage={name + '.pbcor.fits'!r}, overwrite=True)",
                  f"exportfits(imagename={name + '.pb'!r}, fitsimage={name + '.pb.fits'!r}, overwrite=True)", ""]
    return "\n".join(lines)


def pipeline_manifest(spec, casa_version) -> str:
    mous_f = spec["mous_file"]
    asdms = "\n".join(
        f"""        <asdm name="{e}.ms">
          <finalflags name="{e}.ms.flagversions.tgz"/>
          <applycmds name="{e}.ms.calapply.txt"/>
        </asdm>""" for e in ebs_of(spec))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<piperesults name="{mous_f}">
  <ous name="{mous_f}">
    <casaversion name="{casa_version}"/>
    <pipeline_version name="synthetic"/>
    <procedure_name name="hifa_calimage"/>
    <session name="session_1">
      <caltables name="{mous_f}.session_1.caltables.tgz"/>
{asdms}
    </session>
  </ous>
</piperesults>
"""


SCRIPT_FOR_PI = '''# scriptForPI.py stand-in of a synthetic alma-regen delivery.
#
# The real ALMA scriptForPI.py decides between restore and full calibration,
# prepares ../calibrated and runs the pipeline script under `casa --pipeline`.
# This stand-in does the same preparation, records the global variables it
# was given, and runs the restore only where the ALMA pipeline is present.
import glob
import json
import os
import sys

for name, default in (("SPACESAVING", 1), ("DOSPLIT", False), ("DOCONTSUB", False)):
    if name not in globals():
        globals()[name] = default

if os.path.basename(os.getcwd()) != "script":
    sys.exit("scriptForPI: run me from the script/ folder of the delivery")
if not os.path.isdir("../raw"):
    sys.exit("scriptForPI: ../raw is missing: put the raw ASDMs there first")
if os.path.exists("../calibrated"):
    sys.exit("scriptForPI: ../calibrated exists already: move it away before running me")

restore = glob.glob("*casa_piperestorescript.py")
full = [p for p in glob.glob("*casa_pipescript.py") if "cal" in p]
mode = "restore" if restore else ("pipeline" if full else "none")

os.makedirs("../calibrated/working")
os.makedirs("../calibrated/rawdata")
for asdm in sorted(glob.glob("../raw/*.asdm.sdm")):
    eb = os.path.basename(asdm)[: -len(".asdm.sdm")]
    os.symlink(os.path.abspath(asdm), "../calibrated/rawdata/" + eb)
os.symlink("../calibration", "../calibrated/products")

with open("../calibrated/scriptForPI.globals.json", "w") as f:
    json.dump({"SPACESAVING": SPACESAVING, "DOSPLIT": DOSPLIT, "DOCONTSUB": DOCONTSUB,
               "mode": mode}, f)
print("scriptForPI: mode=%s SPACESAVING=%s DOSPLIT=%s DOCONTSUB=%s" % (mode, SPACESAVING, DOSPLIT, DOCONTSUB))

if "h_init" not in globals():
    sys.exit("scriptForPI: this CASA has no ALMA pipeline (h_init, hifa_restoredata); "
             "start it with `casa --pipeline`")
os.chdir("../calibrated/working")
script = "../../script/" + (restore or full)[0]
exec(compile(open(script).read(), script, "exec"), globals())
'''


# ---------------------------------------------------------------- archive

def _add_tree(tf: tarfile.TarFile, root: Path, arc_root: str):
    """Add root/ under arc_root, sorted, with neutral owners: stable tar bytes."""
    paths = [root] + sorted(root.rglob("*"))
    for p in paths:
        info = tf.gettarinfo(str(p), arcname=arc_root if p == root else f"{arc_root}/{p.relative_to(root)}")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 1714521600  # 2024-05-01, the synthetic observing date
        if info.isfile():
            with open(p, "rb") as f:
                tf.addfile(info, f)
        else:
            tf.addfile(info)


def pack_archive(spec, member: Path, archive: Path) -> list:
    """The files exactly as the archive's request handler serves them."""
    archive.mkdir(parents=True, exist_ok=True)
    prefix = (f"{spec['project']}/science_goal.{naming.uid_to_file(spec['science_goal'])}"
              f"/group.{naming.uid_to_file(spec['group'])}/member.{spec['mous_file']}")
    files = []

    def tar(name, parts, semantics):
        path = archive / name
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
            for sub in parts:
                if (member / sub).exists():
                    _add_tree(tf, member / sub, f"{prefix}/{sub}")
        files.append({"name": name, "size": path.stat().st_size, "semantics": semantics})

    for e in spec["ebs"]:
        eb = naming.uid_to_file(e["uid"])
        tar(naming.asdm_tar(spec["project"], e["uid"]), [f"raw/{eb}.asdm.sdm"], "#progenitor")
    tar(naming.auxiliary_tar(spec["project"], spec["mous"]), ["script", "calibration", "qa", "log"], "#auxiliary")
    tar(naming.product_tar(spec["project"], spec["mous"]), ["product"], "#this")
    readme = naming.readme_name(spec["mous"])
    shutil.copyfile(member / readme, archive / readme)
    files.append({"name": readme, "size": (archive / readme).stat().st_size, "semantics": "#documentation"})
    return files
