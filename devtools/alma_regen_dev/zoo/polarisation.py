"""Style polarisation: a full-polarisation pipeline delivery, made with real CASA.

`synthesize()` with its spec changed before CASA runs (casa_scripts/synth_delivery.py does
the rest when the spec has "polarisation"):
- every EB in one session (session_1), full polarisation products (XX XY YX YY);
- a third field, the polarisation calibrator (CALIBRATE_POLARIZATION), 1 Jy with known
  fractional Q and U, observed in two blocks per EB hours apart: with the EBs together
  the parallactic angle spans more than 90 degrees, as leakage solutions need;
- the data carry known leakage (D-terms), an X-Y phase and gains whose X and Y drift
  together; hifa_polcal's session tables are solved from the concatenated
  `session_1_polcalib.ms` (KCROSS, Xfparang+QU, Dflls, X/Y ratio), named as the pipeline
  names them (`session_1_polcalib.ms.hifa_polcal.s20_4.spw0_1.solintinf_5MHz.pcal.tbl`),
  packed in the session's caltables tarball beside the EBs' own, and listed in every EB's
  calapply.txt (interp 'nearest', calwt False) as exportdata writes them; the delivered
  flags are taken after applying them with parang=True, as hifa_restoredata applies.
Small: 7 antennas, 16-channel windows, 10 s integrations.
"""
from ..synth import synthesize

POLCAL = {"name": "J1930-2000", "ra": "19h30m00.000s", "dec": "-20d00m00.00s", "flux_jy": 1.0,
          "q": 0.04, "u": -0.03}
CORRUPTION = {"leakage": 0.03, "xy_phase_deg": 40.0, "phase_drift_deg_per_10min": 20.0}
NCHAN = 16
# Per EB: two blocks (calibrator, polarisation calibrator, target, calibrator), 40 minutes apart.
BLOCK = [["calibrator", 20], ["polcal", 30], ["target", 40], ["calibrator", 20]]
GAP_S = 2400


def customize(spec: dict) -> None:
    spec["stokes"] = "XX XY YX YY"
    spec["polcal"] = dict(POLCAL)
    spec["polarisation"] = dict(CORRUPTION)
    spec["field_intents"] = {POLCAL["name"]: "CALIBRATE_POLARIZATION#ON_SOURCE"}
    spec["integration_s"] = 10
    spec["noise_jy"] = 0.02
    for w in spec["spws"]:
        if w["nchan"] > 4:
            w["nchan"] = NCHAN
    spec["target"]["line"].update(center_chan=10, fwhm_chan=3)
    spec["scans"] = BLOCK[:-1] + [BLOCK[-1] + [GAP_S]] + BLOCK
    # Hour angles: the first EB rises, the second transits (the calibrator near the zenith).
    for i, eb in enumerate(spec["ebs"]):
        eb["hour_angle_s"] = -8000 + 9000 * i


def build(out, *, ebs: int = 2, seed: int = 1, runner=None) -> dict:
    result = synthesize(out, ebs=ebs, seed=seed, antennas=7, runner=runner, sessions=[1] * ebs,
                        customize=customize)
    result["style"] = "polarisation"
    result["truth"]["polcal"] = dict(POLCAL)
    result["truth"]["polarisation"] = dict(CORRUPTION)
    result["truth"]["stokes"] = "XX XY YX YY"
    return result
