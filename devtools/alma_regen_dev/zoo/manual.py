"""Style manual: a manually calibrated delivery (Cycles 0-4, and manual data since), with real CASA.

Built on `synthesize()` (the same seed gives the same ASDMs and truth): its member folder is
turned into what a manual-calibration package holds, and packed again as the archive serves it.
- script/: one `<EB>.ms.scriptForCalibration.py` per EB, in the form of ALMA's manual
  calibration scripts (a `step_title` table, `thesteps` from the global `mysteps`,
  `applyonly` guarding every analysisUtils call, the CASA version check); under
  `applyonly = True` (as scriptForPI sets it) they redo the calibration from the ASDM as the
  real ones do: import, a-priori flags, split of the science spws (<EB>.ms.split), flags
  (band edges, the RFI burst the reducer saw), the calibrator's model, bandpass, gains,
  applycal, split of the corrected data (<EB>.ms.split.cal). Without applyonly they need
  analysisUtils (`aU`), which a CASA without it does not have.
  A scriptForFluxCalibration.py (`flux_script`) concatenates the EBs into calibrated.ms, as
  multi-EB manual deliveries did; the scriptForImaging.py of the synthetic delivery stays.
  scriptForPI.py is a stand-in comment (this is not ALMA's script, and it claims no version).
- calibration/: `<target>.eph` (`ephemeris`): the scripts check it is where scriptForPI links
  it (the synthetic target does not move: the file is not applied). No pipeline files.
- README with "CASA version used for reduction": manual data need the exact CASA.
The truth (`truth`) is synthesize()'s: the recalibrated target must match it within the noise.
"""
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from alma_regen import naming

from . import repack

STEP_TITLES = ["Import of the ASDM", "listobs", "A priori flagging", "Split out science SPWs",
               "Initial flagging", "Putting a model for the flux calibrator(s)", "Save flags before bandpass cal",
               "Bandpass calibration", "Gain calibration", "Application of the bandpass and gain cal tables",
               "Split out corrected column"]
MJD0 = datetime(1858, 11, 17)


def build(out, *, ebs: int = 2, seed: int = 1, runner=None, flux_script: bool = True,
          ephemeris: bool = True) -> dict:
    return repack.synthesize_then(
        lambda result, where: convert(result, where, flux_script=flux_script, ephemeris=ephemeris),
        out, ebs=ebs, seed=seed, runner=runner)


def convert(result: dict, out, *, flux_script: bool = True, ephemeris: bool = True) -> dict:
    """The manual delivery made from one `synthesize()` result (repack.derive: its member folder
    copied to OUT/delivery/ with raw/ hard-linked, made manual, packed into OUT/archive/). The
    truth (model_dir) is the synthesized one's."""
    eph = []

    def edit(spec, member):
        make_manual(member, spec, result, result["casa_version"], flux_script=flux_script, ephemeris=ephemeris)
        eph.extend([f"{spec['target']['name']}.eph"] if ephemeris else [])

    derived = repack.derive(result, out, project=result["project"], edit=edit)
    member = Path(derived["member_dir"])
    return {**derived, "style": "manual", "layout_only": False,
            "manual": {"scripts": sorted(p.name for p in (member / "script").glob("*.ms.scriptForCalibration.py")),
                       "flux_script": flux_script, "ephemeris": eph[0] if eph else None}}


def make_manual(member: Path, spec: dict, result: dict, casa: str, *, flux_script: bool, ephemeris: bool):
    script, cal = member / "script", member / "calibration"
    # What a pipeline delivery has and a manual one has not.
    for p in list(script.iterdir()):
        if not p.name.endswith("scriptForImaging.py"):
            p.unlink()
    shutil.rmtree(cal)
    cal.mkdir()
    for log in (member / "log").glob("*casa_commands.log"):   # the pipeline's command log
        log.unlink()
    eph = f"{spec['target']['name']}.eph" if ephemeris else None
    if eph:
        (cal / eph).write_text(ephemeris_text(spec))
    for e in spec["ebs"]:
        f = naming.uid_to_file(e["uid"])
        rfi = result["truth"]["ebs"][e["uid"]]["rfi"]
        (script / f"{f}.ms.scriptForCalibration.py").write_text(calibration_script(spec, f, casa, rfi, eph))
    if flux_script:
        (script / "scriptForFluxCalibration.py").write_text(flux_calibration_script(spec))
    (script / "scriptForPI.py").write_text(
        "# scriptForPI.py stand-in of a synthetic manual-calibration delivery (alma-regen synth --style manual).\n"
        "# Not ALMA's script: run the calibration with `alma-regen restore --engine manual`, which runs the\n"
        "# *.ms.scriptForCalibration.py scripts as ALMA's scriptForPI does.\n")
    (member / naming.readme_name(spec["mous"])).write_text(
        f"ALMA data delivery README (synthetic: made by alma-regen synth --style manual)\n\n"
        f"Member ObsUnitSet: {spec['mous']}\nProject: {spec['project']}\n"
        f"CASA version used for reduction: {casa}\nQA2 Result: PASS\n\n"
        "Manually calibrated: script/*.ms.scriptForCalibration.py, run by scriptForPI.py.\n")


def _timerange(t0: float, t1: float) -> str:
    """MJD seconds as CASA's time range (UTC), one second wider each side."""
    def fmt(t):
        return (MJD0 + timedelta(seconds=t)).strftime("%Y/%m/%d/%H:%M:%S.%f")[:-3]
    return f"{fmt(t0 - 1.0)}~{fmt(t1 + 1.0)}"


def ephemeris_text(spec) -> str:
    """A JPL-Horizons-like table of the target's position (it does not move)."""
    t = spec["target"]
    rows = "\n".join(f" 2024-May-01 {h:02d}:00     {t['ra']}  {t['dec']}" for h in range(0, 24, 6))
    return (f"*******************************************************************************\n"
            f"Target body name: {t['name']} (synthetic)\n"
            f"*******************************************************************************\n"
            f" Date__(UT)__HR:MN     R.A.___(ICRF)___DEC\n$$SOE\n{rows}\n$$EOE\n")


def calibration_script(spec, f: str, casa: str, rfi: dict, eph: str | None) -> str:
    """One EB's manual calibration script, laid out as ALMA's are."""
    cal, tgt = spec["calibrator"]["name"], spec["target"]["name"]
    refant = "DA%02d" % (41 + spec["refant"])
    science = [i for i, w in enumerate(spec["spws"]) if w["nchan"] > 4]
    spw = ",".join(map(str, science))
    # After the split of the science spws their ids start at 0.
    edges = ",".join("%d:0;%d" % (n, spec["spws"][i]["nchan"] - 1) for n, i in enumerate(science))
    c = spec["calibrator"]
    ms, split, splitcal = f"{f}.ms", f"{f}.ms.split", f"{f}.ms.split.cal"
    titles = ",\n              ".join(f"{n}: {t!r}" for n, t in enumerate(STEP_TITLES))
    version = ".".join(casa.replace("-", ".").split(".")[:3])
    eph_check = "" if not eph else f"""
# The target's ephemeris, linked into this folder by scriptForPI from calibration/
if not os.path.exists({eph!r}):
  sys.exit('ERROR: ephemeris file {eph} not found in ' + os.getcwd())
"""

    def step(n, body):
        return (f"\n# {STEP_TITLES[n]}\nmystep = {n}\nif(mystep in thesteps):\n"
                f"  casalog.post('Step '+str(mystep)+' '+step_title[mystep],'INFO')\n"
                f"  print('Step ', mystep, step_title[mystep])\n\n" + body)

    steps = [
        step(0, f"""  if os.path.exists({ms!r}) == False:
    importasdm({f!r}, vis={ms!r}, asis='Antenna Station Receiver Source CalAtmosphere CalWVR CorrelatorMode SBSummary',
      ocorr_mode='ca', bdfflags=True, with_pointing_correction=False, applyflags=False, process_caldevice=False,
      savecmds=False, lazy=False)
  if applyonly != True: es.fixForCSV2555({ms!r})
"""),
        step(1, f"""  os.system('rm -rf {ms}.listobs')
  listobs(vis = {ms!r},
    listfile = {ms + '.listobs'!r})
"""),
        step(2, f"""  flagdata(vis = {ms!r},
    mode = 'manual',
    autocorr = True,
    flagbackup = False)
"""),
        step(3, f"""  os.system('rm -rf {split}*')
  split(vis = {ms!r},
    outputvis = {split!r},
    datacolumn = 'data',
    spw = {spw!r},
    keepflags = True)
"""),
        step(4, f"""  flagmanager(vis = {split!r},
    mode = 'save',
    versionname = 'Original')

  # The band edges
  flagdata(vis = {split!r},
    mode = 'manual',
    spw = {edges!r},
    flagbackup = False)

  # An RFI burst on DA{41 + rfi['antenna']:02d} in spw 0
  flagdata(vis = {split!r},
    mode = 'manual',
    antenna = 'DA{41 + rfi['antenna']:02d}',
    spw = '0:{rfi['channels'][0]}~{rfi['channels'][-1]}',
    timerange = {_timerange(*rfi['time_mjd_s'])!r},
    flagbackup = False)
"""),
        step(5, f"""  setjy(vis = {split!r},
    field = {cal!r},
    standard = 'manual',
    fluxdensity = [{c['flux_jy']}, 0, 0, 0],
    spix = [{c['spix']}, 0],
    reffreq = '{spec['ref_freq_ghz']:.6f}GHz',
    usescratch = False)
"""),
        step(6, f"""  flagmanager(vis = {split!r},
    mode = 'save',
    versionname = 'BeforeBandpassCalibration')
"""),
        step(7, f"""  os.system('rm -rf {split}.ap_pre_bandpass')
  gaincal(vis = {split!r},
    caltable = {split + '.ap_pre_bandpass'!r},
    field = {cal!r},
    solint = 'int',
    refant = {refant!r},
    calmode = 'p',
    minsnr = 2)

  if applyonly != True: es.checkCalTable({split + '.ap_pre_bandpass'!r}, msName={split!r}, interactive=False)

  os.system('rm -rf {split}.bandpass')
  bandpass(vis = {split!r},
    caltable = {split + '.bandpass'!r},
    field = {cal!r},
    solint = 'inf',
    combine = 'scan',
    refant = {refant!r},
    solnorm = True,
    bandtype = 'B',
    minsnr = 2,
    gaintable = {split + '.ap_pre_bandpass'!r})

  if applyonly != True: es.checkCalTable({split + '.bandpass'!r}, msName={split!r}, interactive=False)
"""),
        step(8, f"""  os.system('rm -rf {split}.phase_int')
  gaincal(vis = {split!r},
    caltable = {split + '.phase_int'!r},
    field = {cal!r},
    solint = 'int',
    refant = {refant!r},
    calmode = 'p',
    minsnr = 2,
    gaintable = {split + '.bandpass'!r})

  os.system('rm -rf {split}.ampli_inf')
  gaincal(vis = {split!r},
    caltable = {split + '.ampli_inf'!r},
    field = {cal!r},
    solint = 'inf',
    refant = {refant!r},
    calmode = 'a',
    minsnr = 2,
    gaintable = [{split + '.bandpass'!r}, {split + '.phase_int'!r}])

  if applyonly != True: es.checkCalTable({split + '.ampli_inf'!r}, msName={split!r}, interactive=False)
"""),
        step(9, f"""  flagmanager(vis = {split!r},
    mode = 'save',
    versionname = 'BeforeApplycal')

  applycal(vis = {split!r},
    field = {cal!r},
    gaintable = [{split + '.bandpass'!r}, {split + '.phase_int'!r}, {split + '.ampli_inf'!r}],
    gainfield = ['', '', ''],
    interp = ['linear,linear', 'linear,linear', 'linear,linear'],
    calwt = False,
    flagbackup = False)

  applycal(vis = {split!r},
    field = {tgt!r},
    gaintable = [{split + '.bandpass'!r}, {split + '.phase_int'!r}, {split + '.ampli_inf'!r}],
    gainfield = ['', {cal!r}, {cal!r}],
    interp = ['linear,linear', 'linear,linear', 'linear,linear'],
    calwt = False,
    flagbackup = False)
"""),
        step(10, f"""  os.system('rm -rf {splitcal}')
  split(vis = {split!r},
    outputvis = {splitcal!r},
    datacolumn = 'corrected',
    keepflags = True)
"""),
    ]
    return f"""# ALMA Data Reduction Script
# (synthetic: written by alma-regen synth --style manual, in the form of ALMA's manual calibration scripts)

# Calibration

thesteps = []
step_title = {{{titles}}}

if 'applyonly' not in globals(): applyonly = False
try:
  print('List of steps to be executed ...', mysteps)
  thesteps = mysteps
except:
  print('global variable mysteps not set.')
if (thesteps==[]):
  thesteps = range(0,len(step_title))
  print('Executing all steps: ', thesteps)

# The Python variable 'mysteps' will control which steps
# are executed when you start the script using
#   execfile('scriptForCalibration.py')
# e.g. setting
#   mysteps = [2,3,4]
# before starting the script will make the script execute
# only steps 2, 3, and 4
# Setting mysteps = [] will make it execute all steps.

import re
import os
import sys
import casatools

if applyonly != True: es = aU.stuffForScienceDataReduction()


if re.search('^{version}', casatools.version_string()) == None:
 sys.exit('ERROR: PLEASE USE THE SAME VERSION OF CASA THAT YOU USED FOR GENERATING THE SCRIPT: {version}')

# CALIBRATE_BANDPASS: {cal}
# CALIBRATE_FLUX: {cal}
# CALIBRATE_PHASE: {cal}
# OBSERVE_TARGET: {tgt}

# Using reference antenna = {refant}
{eph_check}{''.join(steps)}"""


def flux_calibration_script(spec) -> str:
    """scriptForFluxCalibration.py as multi-EB manual deliveries had it: run by scriptForPI in
    calibrated/ after every EB; here the calibrator's model already sets the flux scale in each
    EB, so it only gathers the EBs into calibrated.ms."""
    vis = [f"{naming.uid_to_file(e['uid'])}.ms.split.cal" for e in spec["ebs"]]
    return f"""# ALMA Data Reduction Script
# (synthetic: written by alma-regen synth --style manual)

# Flux calibration: the flux scale of {spec['calibrator']['name']} was set in each EB's script
# (setjy); the calibrated EBs are concatenated into calibrated.ms.

import os

os.system('rm -rf calibrated.ms')
concat(vis = {vis!r},
  concatvis = 'calibrated.ms')
"""
