"""`alma-regen synth`: a small, realistic ALMA delivery made with real CASA.

The CASA half (simulate, corrupt, export ASDMs, calibrate as the pipeline
does, image) runs in a child process: casa_scripts/synth_delivery.py beside
this module (it imports the product's include/casa_scripts helpers).
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
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.dom import minidom

from alma_regen import naming
from alma_regen.casa.runner import CasaRunner
from alma_regen.errors import PermanentError

log = logging.getLogger(__name__)

# The CASA half, shipped with this package (package data): run by path, like the product's
# include/casa_scripts (alma_regen.paths.casa_script), in the same sandboxed CASA child.
SYNTH_SCRIPT = Path(__file__).resolve().parent / "casa_scripts" / "synth_delivery.py"

CASA_LINE = "CASA version used for reduction: {casa}"
# What the manifest records as the pipeline: the files are written in the
# formats of pipeline 2025.1.1.61, but that pipeline did not make them.
PIPELINE_VERSION = "alma-regen synth (formats of pipeline 2025.1.1.61)"
RECIPE = "hifa_calimage"
RESTORE_TEMPLATES = ("current", "old")


def default_sessions(ebs: int) -> list:
    """Session number per EB: two EBs a session, odd numbers only (1, 1, 3, 3,
    5, ...), as real MOUSes skip session numbers of EBs that failed QA0."""
    return [2 * (i // 2) + 1 for i in range(ebs)]


def check_sessions(sessions, ebs: int) -> list:
    """One positive session number per EB, in observing order (never decreasing)."""
    sessions = list(sessions)
    if len(sessions) != ebs:
        raise PermanentError(f"--sessions needs one session number per EB ({ebs}), not {len(sessions)}")
    if any(not isinstance(n, int) or n < 1 for n in sessions) or sessions != sorted(sessions):
        raise PermanentError(f"--sessions must be positive, non-decreasing numbers, not {sessions}")
    return sessions


def make_spec(seed: int, ebs: int, antennas: int, member_dir: Path, sessions=None) -> dict:
    """Names and truth, all derived from the seed (same seed, same delivery)."""
    if not 1 <= ebs <= 50:
        raise PermanentError(f"--ebs must be between 1 and 50, not {ebs}")
    sessions = check_sessions(default_sessions(ebs) if sessions is None else sessions, ebs)
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
        # calibrator brackets every target scan. Short scans keep the
        # 64-channel windows small on disk.
        "scans": [["calibrator", 30], ["target", 60], ["calibrator", 30], ["target", 60], ["calibrator", 30]],
        "ref_freq_ghz": 230.0,
        # Two 250 MHz science windows of 64 channels: enough channels for the
        # pipeline's imaging heuristics (cube, hif_findcont) to see a line.
        "spws": [
            {"name": "X1#BB_1#SW-01#FULL_RES", "freq_ghz": 230.0, "width_mhz": 3.90625, "nchan": 64},
            {"name": "X1#BB_2#SW-01#FULL_RES", "freq_ghz": 232.0, "width_mhz": 3.90625, "nchan": 64},
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
            # A Gaussian line on source A in spw 1 (TOPO channels), on top of
            # its continuum; spw 0 and the rest of spw 1 are line-free.
            "line": {"source": "A", "spw": 1, "center_chan": 40, "fwhm_chan": 4, "peak_jy": 0.5},
        },
        "noise_jy": 0.05,
        "expected_rms_jy": 0.0005,
        "rfi": {"antenna": 5, "amp_jy": 40.0},
        "ebs": [{"uid": u, "seed": seed * 1000 + i, "hour_angle_s": -3600 + 2400 * i,
                 "session": f"session_{sessions[i]}"} for i, u in enumerate(eb_uids)],
    }


def synth_script() -> Path:
    """casa_scripts/synth_delivery.py of this package (a clear error when the installation lacks it)."""
    if not SYNTH_SCRIPT.is_file():
        raise FileNotFoundError(f"alma-regen-dev installation is missing {SYNTH_SCRIPT}")
    return SYNTH_SCRIPT


def _python_for_casa() -> str:
    # The modular CASA of requirements.txt lives in this interpreter's environment.
    return sys.executable


def synthesize(out, ebs: int = 2, seed: int = 1, antennas: int = 8, runner: CasaRunner | None = None,
               sessions=None, restore_template: str = "current", customize=None) -> dict:
    """Build OUT/archive/ (and OUT/delivery/, the untarred member) and describe it.

    sessions: the session number of each EB (default_sessions when None);
    restore_template: "current" or "old" (the pre-2021 restore script);
    customize: a style's change to the spec before CASA runs (zoo.polarisation), called with it."""
    if restore_template not in RESTORE_TEMPLATES:
        raise PermanentError(f"--restore-template must be one of {', '.join(RESTORE_TEMPLATES)}, "
                             f"not {restore_template!r}")
    out = Path(out).resolve()
    t0 = time.monotonic()
    scratch = out / "scratch"
    delivery = out / "delivery"
    for d in (scratch, delivery, out / "archive", out / "truth"):
        shutil.rmtree(d, ignore_errors=True)
    spec = make_spec(seed, ebs, antennas, delivery / naming.member_dir("uid://A001/X1/X1"), sessions)
    member = delivery / naming.member_dir(spec["mous"])
    spec["member_dir"] = str(member)
    spec["truth_dir"] = str(out / "truth")
    if customize is not None:
        customize(spec)
    scratch.mkdir(parents=True)
    (scratch / "spec.json").write_text(json.dumps(spec, indent=1))
    runner = runner or CasaRunner(log)
    run = runner.run([_python_for_casa(), str(synth_script()), "spec.json", "result.json"], cwd=scratch)
    result = json.loads((scratch / "result.json").read_text())
    casa_version = result["casa_version"]
    write_text_files(spec, member, casa_version, result["imaging_calls"], restore_template)
    files = pack_archive(spec, member, out / "archive")
    shutil.rmtree(scratch)
    ebs_truth = {e["uid"]: e for e in result["ebs"]}
    return {
        "mous_uid": spec["mous"],
        "project": spec["project"],
        "ebs": [e["uid"] for e in spec["ebs"]],
        "sessions": sessions_of(spec),
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


def sessions_of(spec) -> dict:
    """Session name -> its EB uids, in observing order."""
    out = {}
    for e in spec["ebs"]:
        out.setdefault(e["session"], []).append(e["uid"])
    return out


def write_text_files(spec, member: Path, casa_version: str, imaging_calls: list, restore_template: str = "current"):
    mous_f = spec["mous_file"]
    script = member / "script"
    cal = member / "calibration"
    for d in (script, cal, member / "log", member / "qa"):
        d.mkdir(parents=True, exist_ok=True)
    ebs = ebs_of(spec)
    readme = README.format(mous=spec["mous"], project=spec["project"])
    (member / naming.readme_name(spec["mous"])).write_text(readme)
    (script / f"PPR_{mous_f}.xml").write_text(ppr_xml(spec))
    (script / f"member.{mous_f}.scriptForPI.py").write_text(SCRIPT_FOR_PI)
    (script / f"member.{mous_f}.hifa_calimage.casa_piperestorescript.py").write_text(
        restore_script(ebs, [e["session"] for e in spec["ebs"]], restore_template))
    (script / f"member.{mous_f}.hifa_calimage.casa_pipescript.py").write_text(pipescript(ebs))
    (script / f"member.{mous_f}.scriptForImaging.py").write_text(imaging_script(spec, ebs, imaging_calls))
    (cal / f"{mous_f}.{RECIPE}.pipeline_manifest.xml").write_text(pipeline_manifest(spec, casa_version))
    c = spec["calibrator"]
    # The pipeline's format (h/tasks/importdata/fluxes.py): per MS, field id and
    # spw id; the calibrator is field 0, the first field the simulation defines.
    flux = ["ms,field,spw,I,Q,U,V,spix,uvmin,uvmax,comment"]
    for eb in ebs:
        for i, _ in enumerate(spec["spws"]):
            flux.append(f"{eb}.ms,0,{i},{c['flux_jy']:.4f},0,0,0,{c['spix']},0.0,0.0,"
                        f"\"# field={c['name']} intents=AMPLITUDE,BANDPASS,PHASE origin=synthetic\"")
    (cal / "flux.csv").write_text("\n".join(flux) + "\n")
    (member / "qa" / f"{mous_f}.qa2_report.html").write_text(
        f"<html><body><h1>QA2 report {spec['mous']}</h1><p>{CASA_LINE.format(casa=casa_version)}</p>"
        "<p>Synthetic delivery made by alma-regen synth.</p></body></html>\n")
    (member / "log" / f"member.{mous_f}.hifa_calimage.casa_commands.log").write_text(
        "# synthetic delivery: the calibration commands are in calibration/*.calapply.txt\n")


# As modern READMEs: no "CASA version used for reduction" line; the versions
# are in the pipeline manifest (and the QA2 report).
README = """ALMA data delivery README (synthetic: made by alma-regen synth)

Member ObsUnitSet: {mous}
Project: {project}

Calibrated in the ALMA pipeline's formats by alma-regen synth with modular CASA; the CASA and
pipeline versions are in calibration/*.pipeline_manifest.xml. To restore the calibrated data,
run script/*scriptForPI.py with a CASA that includes the ALMA pipeline.

Directory structure:
  raw/          the raw data (ASDMs), from the request handler
  script/       scriptForPI.py restores the calibrated data; scriptForImaging.py makes the images
  calibration/  calibration tables, flag versions and apply files
  product/      the images made by the observatory
"""


def ppr_intents(spec) -> str:
    """ProcessingIntents: the observing mode, and SESSION_<n> = its EB uids joined
    by ' | ', the form executeppr reads. It reads SESSION_1, SESSION_2, ... until
    one is missing, so a skipped session number is listed with no EB."""
    by_number = {int(name.split("_")[1]): uids for name, uids in sessions_of(spec).items()}
    items = [("INTERFEROMETRY_STANDARD_OBSERVING_MODE", "Undefined")]
    items += [(f"SESSION_{n}", " | ".join(by_number.get(n, []))) for n in range(1, max(by_number) + 1)]
    return "\n".join(f"""        <Intents>
          <Keyword>{k}</Keyword>
          <Value>{v}</Value>
        </Intents>""" for k, v in items)


def ppr_xml(spec) -> str:
    datasets = "\n".join(
        f"""      <DataSet>
        <RelativePath>{spec['project']}/science_goal.{naming.uid_to_file(spec['science_goal'])}/group.{naming.uid_to_file(spec['group'])}/member.{spec['mous_file']}</RelativePath>
        <SchedBlockRef entityId="uid://A001/X3000/X1" partId="X00000000" entityTypeName="SchedBlock" documentVersion="1"/>
        <SessionRef entityId="uid://A001/X3000/X1" partId="X{e['session'].split('_')[1]}" entityTypeName="SchedBlock" documentVersion="1"/>
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
      <ProcessingIntents>
{ppr_intents(spec)}
      </ProcessingIntents>
      <ProcessingProcedure>
        <ProcedureTitle>hifa_calimage</ProcedureTitle>
      </ProcessingProcedure>
{datasets}
    </ProcessingRequest>
  </ProcessingRequests>
</SciPipeRequest>
"""


def _py_list(items) -> str:
    """A list of strings as Python prints it (the pipeline formats its lists so)."""
    return "[" + ", ".join(repr(x) for x in items) + "]"


def restore_script(ebs, sessions, template: str = "current") -> str:
    """hifa_restoredata's restore script as hifa_exportdata writes it: one session
    name per EB. "old" adds the two lines scripts had before late 2020."""
    head = ("from recipes.almahelpers import fixsyscaltimes # SACM/JAO - Fixes\n"
            "__rethrow_casa_exceptions = True\n") if template == "old" else ""
    return (f"{head}h_init()\ntry:\n"
            f"    hifa_restoredata (vis={_py_list(ebs)}, session={_py_list(sessions)}, ocorr_mode='ca')\n"
            "finally:\n    h_save()\n")


def pipescript(ebs) -> str:
    """The calibration pipeline script, a shortened hifa_cal recipe of real tasks
    that the real pipeline runs to completion on simulated data.

    Simulations have no Tsys, WVR or antenna-position data, so the Tsys, WVR
    and flagging-by-Tsys stages are left out, and the heuristics that rank by
    Tsys are replaced by fixed choices (bandpass: phase-up and solint by hand;
    spwphaseup: default spw map). The flux scale comes from flux.csv through
    hif_setmodels (dbservice=False: no network). hifa_gfluxscale is left out:
    the one calibrator is the amplitude, bandpass and phase calibrator at
    once, so there is no field to transfer the scale to. For the same reason
    hif_applycal selects TARGET,PHASE: the calibrator's scans carry all three
    intents, which the pipeline's per-intent apply library cannot express
    (CASA refuses the duplicate selection), and PHASE covers those rows."""
    vis = ", ".join(repr(e) for e in ebs)
    return f"""# synthetic delivery: a shortened hifa_cal recipe (no Tsys, WVR or antenna positions in simulations)
context = h_init()
context.set_state('ProjectSummary', 'proposal_code', 'synthetic')
try:
    hifa_importdata(vis=[{vis}], dbservice=False)
    hifa_flagdata()
    hif_refant()
    hif_setmodels()
    hifa_bandpass(hm_phaseup='manual', hm_bandpass='fixed')
    hifa_spwphaseup(hm_spwmapmode='default')
    hifa_timegaincal()
    hif_applycal(intent='TARGET,PHASE')
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
    """The manifest as hifa_exportdata writes it (ElementTree, pretty-printed by
    minidom with two-space indents): versions, procedure, execution nodes, the
    PPR, per session its caltables and per EB (`<EB>.ms`) its final flags and
    apply file, then the scripts and the manifest itself. No weblog and no
    images: the delivery has no weblog, and product/ was imaged by hand."""
    mous_f, prefix = spec["mous_file"], f"{spec['mous_file']}.{RECIPE}"
    member = dict(level="member", package=RECIPE)
    root = ET.Element("piperesults", name=mous_f)
    ous = ET.SubElement(root, "ous", name=mous_f)
    ET.SubElement(ous, "casaversion", name=casa_version)
    ET.SubElement(ous, "pipeline_version", name=PIPELINE_VERSION)
    ET.SubElement(ous, "procedure_name", name=RECIPE)
    ET.SubElement(ET.SubElement(ous, "execution_environment"), "node", num_mpi_servers="0")
    ET.SubElement(ous, "piperequest", name=f"{prefix}.pprequest.xml", level="member", ous=mous_f,
                  package=RECIPE, datatype="pprequest", format="xml")
    for session, uids in sessions_of(spec).items():
        el = ET.SubElement(ous, "session", name=session)
        # exportdata does not pass the OUS here: ous_name stays "N/A".
        ET.SubElement(el, "caltables", name=f"{mous_f}.{session}.caltables.tgz", ous_name="N/A", level="member",
                      session=session, package=RECIPE, datatype="caltables", format="tgz")
        for uid in uids:
            ms = naming.uid_to_file(uid) + ".ms"
            asdm = ET.SubElement(el, "asdm", name=ms, datatype="asdm", format="sdm")
            ET.SubElement(asdm, "finalflags", name=f"{ms}.flagversions.tgz", asdm=ms,
                          datatype="ms.flagversions", format="tgz")
            ET.SubElement(asdm, "applycmds", name=f"{ms}.calapply.txt", asdm=ms, datatype="ms.calapply", format="txt")
    for tag, name, datatype, fmt in (("casa_cmdlog", "casa_commands.log", "casa_commands", "log"),
                                     ("pipescript", "casa_pipescript.py", "casa_pipescript", "py"),
                                     ("restorescript", "casa_piperestorescript.py", "casa_piperestorescript", "py")):
        ET.SubElement(ous, tag, name=f"{prefix}.{name}", level="member", ous=mous_f, package=RECIPE,
                      datatype=datatype, format=fmt)
    ET.SubElement(ous, "manifest", name=f"{prefix}.pipeline_manifest.xml", ous=mous_f, **member,
                  datatype="pipeline_manifest", format="xml")
    return minidom.parseString(ET.tostring(root, "utf-8")).toprettyxml(indent="  ")


SCRIPT_FOR_PI = '''# scriptForPI.py stand-in of a synthetic alma-regen delivery.
#
# Behaves as the real ALMA scriptForPI.py (v1.34, v2.5) does, in its own
# words: started in script/ under `casa --pipeline`, it reads SPACESAVING,
# DOSPLIT, DOCONTSUB and USEMS only from its global namespace (a person sets
# them before `execfile(this, globals())`), restores (a restore script) or
# reruns (only a calibration pipescript) the pipeline calibration in
# ../calibrated/working, then splits every EB's science spws into
# ../calibrated/<EB>.ms.split.cal (all fields; the original spw ids unless the
# EBs' science spws differ, as v2.5) or, when only the imaging pipeline imaged
# the data and DOSPLIT is off (v2.5's three counts, as its shell commands count),
# links ../calibrated/<EB>.ms. A PPR EB absent from raw/ is left out of its own
# lists (the restore script runs unchanged), as v2.5. Like the real one it
# reports problems with an ERROR line and carries on, and ends "Done" even when
# it found nothing to do.
# It also records the options it was given in
# ../calibrated/scriptForPI.globals.json, so tests can see them arrive.
import glob
import json
import os
import re
import shutil
import sys


def _option(name, kind, default):
    if name not in globals():
        return default
    value = globals()[name]
    if type(value) is not kind or (kind is int and value < -1):
        sys.exit("ERROR: %s value %r not permitted" % (name, value))
    print("%s = %r" % (name, value))
    return value


def _one(pattern):
    found = glob.glob(pattern)
    if len(found) > 1:
        sys.exit("ERROR: more than one %s: %s" % (pattern, found))
    return found[0] if found else None


def _ppr_ebs(ppr):
    if ppr is None:
        return []
    with open(ppr) as f:
        return re.findall(r"<AsdmDiskName>\\s*(uid[^<\\s]*)\\s*</AsdmDiskName>", f.read())


def _count_lines(paths, keep):
    """The lines of the files for which keep(line) holds, as `cat FILES | grep ... | wc -l` counts."""
    n = 0
    for path in paths:
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if keep(line))
    return n


def _imaging_pipeline_only(ppr):
    """Science images from the imaging pipeline alone: more than one PPR line naming
    hif_makeimages, a product/*_sci.spw*.fits, and no line without '#' in the
    scriptForImaging (a blank line is such a line)."""
    if ppr is None or _count_lines([ppr], lambda line: "hif_makeimages" in line) < 2:
        return False
    if not glob.glob("../product/*_sci.spw*.fits"):
        return False
    return _count_lines(glob.glob("*scriptForImaging.py"), lambda line: "#" not in line) == 0


def _du_mb(path):
    total = 0
    # As du does: links are counted, not followed (an ASDM may link to itself).
    for root, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total / 2.0 ** 20


def _check_disk(savings, extra_scripts):
    if savings == -1:
        return
    factor = {0: 11, 1: 7}.get(savings, 3) + (3 if extra_scripts else 0)
    need = _du_mb("../raw") * factor
    free = shutil.disk_usage("../raw").free / 2.0 ** 20
    print("Found %.0f MB of free disk space; expect to need up to %.0f MB." % (free, need))
    if need > free:
        sys.exit("ERROR: probably not enough free disk space; set SPACESAVING to -1 to try anyway.")


def _link_ebs(ebs, where):
    """<where>/<EB> -> the raw ASDM; `where` is one level below calibrated/."""
    for eb in ebs:
        target = "../../raw/%s.asdm.sdm" % eb
        if not os.path.exists(os.path.join(where, target)):
            sys.exit("ERROR: cannot find raw/%s.asdm.sdm" % eb)
        os.symlink(target, os.path.join(where, eb))


def _copy_rerun_inputs():
    """What a pipeline rerun reads from working/, copied from ../../calibration."""
    for pattern, name in (("*flux.csv", "flux.csv"), ("*antennapos.csv", "antennapos.csv"),
                          ("*cont.dat", "cont.dat")):
        found = glob.glob("../../calibration/" + pattern)
        if len(found) > 1:
            sys.exit("ERROR: found more than one %s in directory calibration" % pattern)
        if found:
            shutil.copy(found[0], name)
    for path in glob.glob("../../calibration/*flagtemplate.txt") + glob.glob("../../calibration/*pipeline_manifest.xml"):
        shutil.copy(path, ".")


def _science_spws(vis):
    from casatools import msmetadata
    md = msmetadata()
    md.open(vis)
    try:
        return [int(s) for s in md.spwsforintent("OBSERVE_TARGET*") if md.nchan(s) > 4]
    finally:
        md.close()


def needs_reindex(science_spws):
    """The spw ids are renumbered from 0 only when the science spws of the EBs split differ."""
    return len(set(tuple(s) for s in science_spws.values())) > 1


def _finish(ebs, split, savings):
    from casatasks import mstransform
    to_split = {}
    for eb in ebs:
        vis = eb + ".ms"
        if not os.path.exists(vis):
            print("ERROR: %s was not created." % vis)
        elif not split:
            print("Imaging pipeline was used: linking %s into calibrated/" % vis)
            for name in (vis, vis + ".flagversions"):
                if os.path.exists(name):
                    os.symlink("working/" + name, "../" + name)
        else:
            to_split[eb] = _science_spws(vis)
    reindex = needs_reindex(to_split)
    if reindex:
        print("Note: the science spws differ between the EBs: spw ids renumbered from 0")
    for eb, spws in to_split.items():
        vis = eb + ".ms"
        spw = ",".join(str(s) for s in spws)
        print("Splitting out science spws %s of %s (reindex=%s)" % (spw, eb, reindex))
        mstransform(vis=vis, outputvis=vis + ".split.cal", spw=spw, datacolumn="corrected", reindex=reindex)
        if not os.path.exists(vis + ".split.cal"):
            print("ERROR: %s.split.cal was not created." % vis)
            continue
        shutil.move(vis + ".split.cal", "../" + vis + ".split.cal")
        if savings >= 2:
            shutil.rmtree(vis)


def main(namespace):
    savings = _option("SPACESAVING", int, 0)
    dosplit = _option("DOSPLIT", bool, False)
    _option("DOCONTSUB", bool, False)
    usems = "USEMS" in namespace
    if os.path.basename(os.getcwd()) != "script":
        sys.exit("ERROR: Please start this script in directory script.")
    restore = _one("*casa_piperestorescript.py")
    full = _one("*cal*casa_pipescript.py")
    ppr = _one("*PPR*.xml") or _one("*cal*pprequest.xml")
    if not os.path.isdir("../calibration"):
        sys.exit("ERROR: Cannot find directory calibration")
    for manifest in glob.glob("*pipeline_manifest.xml"):
        shutil.copy(manifest, "../calibration")
    if not restore and not full:
        sys.exit("ERROR: No calibration script found.")
    if not os.path.isdir("../raw"):
        sys.exit("ERROR: directory raw not present.")
    extra = glob.glob("*scriptForPolCalibration.py") + glob.glob("*scriptForFluxCalibration.py") + \\
        glob.glob("*scriptForImagingPrep.py")
    _check_disk(savings, extra)
    ebs = _ppr_ebs(ppr)
    missing = [eb for eb in ebs if not os.path.isdir("../raw/%s.asdm.sdm" % eb)]
    if missing:
        print("ERROR: these ASDMs are absent from directory raw: %s. Will try to proceed with the rest." % missing)
        ebs = [eb for eb in ebs if eb not in missing]
        if not ebs:
            sys.exit("ERROR: Nothing to process.")
    if os.path.exists("../calibrated") and not usems:
        sys.exit("WARNING: will stop here since directory calibrated already exists.")
    os.makedirs("../calibrated", exist_ok=usems)
    mode = "restore" if restore else "pipeline"
    seen = {name: namespace[name] for name in ("SPACESAVING", "DOSPLIT", "DOCONTSUB", "USEMS") if name in namespace}
    with open("../calibrated/scriptForPI.globals.json", "w") as f:
        json.dump(dict(seen, mode=mode), f)
    if ebs:
        if "h_init" not in namespace:
            sys.exit("ERROR: Pipeline not available (no ALMA pipeline in this CASA). "
                     "Make sure you start CASA with option --pipeline.")
        split = dosplit or not _imaging_pipeline_only(ppr)
        _calibrate(namespace, ebs, restore, full, split, savings)
    os.chdir("../calibrated")
    for script in extra:
        print("Executing %s ..." % script)
        _run("../script/" + script, namespace)
    print("Done. Please find results in directory calibrated.")


def _run(script, namespace):
    with open(script) as f:
        exec(compile(f.read(), script, "exec"), namespace)


def _calibrate(namespace, ebs, restore, full, split, savings):
    os.chdir("../calibrated")
    if restore:
        os.mkdir("rawdata")
        _link_ebs(ebs, "rawdata")
        os.symlink("../calibration", "products")
    os.mkdir("working")
    os.chdir("working")
    if restore:
        script = "../../script/" + restore
    else:
        print("Pipeline calibration by pipeline rerun")
        _link_ebs(ebs, ".")
        _copy_rerun_inputs()
        script = "../../script/" + full
    _run(script, namespace)
    _finish(ebs, split, savings)
    os.chdir("..")


home = os.getcwd()
try:
    main(globals())
finally:
    os.chdir(home)
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


def pack_archive(spec, member: Path, archive: Path, old_package: bool = False) -> list:
    """The files exactly as the archive's request handler serves them.

    old_package: as Cycles 0-4 packed a MOUS (the delivery zoo's cycle4 style): no auxiliary
    tar and no README beside the tars; script/, calibration/, qa/ or qa2/, log/, product/ and
    the README (named `README`) in the `_001_of_001.tar`."""
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
    if old_package:
        tar(naming.product_tar(spec["project"], spec["mous"]),
            ["README", "script", "calibration", "qa", "qa2", "log", "product"], "#this")
        return files
    tar(naming.auxiliary_tar(spec["project"], spec["mous"]), ["script", "calibration", "qa", "log"], "#auxiliary")
    tar(naming.product_tar(spec["project"], spec["mous"]), ["product"], "#this")
    readme = naming.readme_name(spec["mous"])
    shutil.copyfile(member / readme, archive / readme)
    files.append({"name": readme, "size": (archive / readme).stat().st_size, "semantics": "#documentation"})
    return files
