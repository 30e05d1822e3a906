"""Make the CASA half of a synthetic ALMA delivery (runs in CASA's Python).

Usage: python synth_delivery.py SPEC.json RESULT.json   (cwd: a scratch folder)

For each execution block of the spec: simulate an ALMA observation with the
simulator tool (antennas from casadata's ALMA configuration), predict known
point sources (one with a spectral line) through the primary beam, corrupt
the data with known antenna gains, bandpass and noise plus an RFI burst,
export a real ASDM, then act as the ALMA pipeline: import it the way
hifa_restoredata does, flag, solve bandpass and gains on the calibrator,
write calapply.txt in the pipeline's form (pipeline intents, science spws),
apply it as hifa_restoredata does (intents mapped to the MS's obs_modes),
then save the `Pipeline_Final` flags as exportdata does. Caltables are packed
per session. Finally image the target from the calibrated data for product/.
The parent process (alma_regen_dev.synth) writes the scripts, README, PPR and
manifest and packs the archive.

With spec["polarisation"] (the polarisation style, alma_regen_dev.zoo.polarisation):
full polarisation products (XX XY YX YY), a third field, a polarised calibrator,
observed over a wide parallactic angle range; the data carry known leakage
(D-terms) and an X-Y phase, and are solved as hifa_polcal does: per session the
polarisation calibrator's calibrated data of every EB concatenated into
`<session>_polcalib.ms`, then its cross-hand delay (KCROSS), X-Y phase and source
Q, U (Xfparang+QU), leakage (Dflls) and X/Y amplitude ratio, tables named
`<session>_polcalib.ms.hifa_polcal.*` as the pipeline names them, applied to every
EB of the session (calapply.txt lines, interp 'nearest', calwt False) with
parang=True, as hifa_restoredata applies them.
This file must not import airflow or alma_regen. It lives in the dev tools (alma-regen-dev)
and imports the product's CASA-side helpers (casa_boot, almaopts, calapply_parse,
imaging_params) from include/casa_scripts, found through ALMA_REGEN_INCLUDE, which
every CASA child's environment holds (alma_regen.casa.env).
"""
import json
import math
import os
import re
import shutil
import sys
import tarfile

sys.path.insert(0, os.path.join(os.environ["ALMA_REGEN_INCLUDE"], "casa_scripts"))
import casa_boot  # noqa: E402  (offline CASA; must come before casatools)

import numpy as np  # noqa: E402
from casatasks import (applycal, bandpass, concat, exportasdm, exportfits, flagdata,  # noqa: E402
                       flagmanager, gaincal, importasdm, mstransform, polcal, setjy, tclean)
from casatools import componentlist, measures, msmetadata, quanta, simulator, table, version_string  # noqa: E402

import almaopts  # noqa: E402
import calapply_parse  # noqa: E402
import imaging_params  # noqa: E402

casa_boot.casa_log_to_console()

me, tb = measures(), table()
SOURCE_DATE = 1714521600  # 2024-05-01, the synthetic observing date
# A pretend pipeline working folder: calapply.txt records absolute paths there,
# as real deliveries do; a restore must rewrite them.
PIPELINE_WORKDIR = "/lustre/alma/pipeline/{project}/{mous}/working"
# flagmanager's comment on the version exportdata saves.
FINAL_FLAGS_COMMENT = "Final pipeline flags"


def antenna_config(spec):
    import casadata
    path = os.path.join(casadata.datapath, "alma", "simmos", spec["antenna_config"])
    rows = [ln.split() for ln in open(path) if ln.strip() and not ln.startswith("#")]
    rows = rows[: spec["antennas"]]
    return dict(
        x=[float(r[0]) for r in rows], y=[float(r[1]) for r in rows], z=[float(r[2]) for r in rows],
        dishdiameter=[float(r[3]) for r in rows], padname=[r[4] for r in rows],
        antname=["DA%02d" % (41 + i) for i in range(len(rows))],
    )


def simulate(spec, eb, msname):
    """An empty MS with ALMA's layout: scans alternate calibrator and target."""
    sm = simulator()
    sm.open(msname)
    cfg = antenna_config(spec)
    sm.setconfig(telescopename="ALMA", mount=["alt-az"], coordsystem="local",
                 referencelocation=me.observatory("ALMA"), **cfg)
    for spw in spec["spws"]:
        sm.setspwindow(spwname=spw["name"], freq="%.6fGHz" % spw["freq_ghz"],
                       deltafreq="%.6fMHz" % spw["width_mhz"], freqresolution="%.6fMHz" % spw["width_mhz"],
                       nchannels=spw["nchan"], stokes=spec.get("stokes", "XX YY"))
    sm.setfeed(mode="perfect X Y", pol=[""])
    for f in fields(spec):
        sm.setfield(sourcename=f["name"], sourcedirection=me.direction("J2000", f["ra"], f["dec"]),
                    calcode="C" if f is spec["calibrator"] else "")
    sm.setlimits(shadowlimit=0.001, elevationlimit="8.0deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(integrationtime="%ds" % spec["integration_s"], usehourangle=True,
                referencetime=me.epoch("UTC", spec["date"]))
    t = eb["hour_angle_s"]
    for scan in spec["scans"]:
        # [field, seconds] or [field, seconds, seconds to the next scan]
        field, dur = scan[:2]
        name = spec[field]["name"]
        for spw in spec["spws"]:
            sm.observe(name, spw["name"], starttime="%ds" % t, stoptime="%ds" % (t + dur))
        t += dur + (scan[2] if len(scan) > 2 else spec["slew_s"])
    sm.close()
    fix_subtables(msname, spec)


def fields(spec):
    """The fields in their MS order: the calibrator (field 0), the target, the polarisation calibrator."""
    return [spec["calibrator"], spec["target"]] + ([spec["polcal"]] if spec.get("polcal") else [])


def fix_subtables(msname, spec):
    """Undo what the simulator writes differently from an ALMA MS.

    One polarization setup (not one per spw), one observation covering the
    whole EB (exportasdm makes one ExecBlock per OBSERVATION row), the
    project code in OBSERVATION.
    """
    tb.open(msname + "/DATA_DESCRIPTION", nomodify=False)
    tb.putcol("POLARIZATION_ID", np.zeros(tb.nrows(), np.int32))
    tb.close()
    tb.open(msname + "/POLARIZATION", nomodify=False)
    if tb.nrows() > 1:
        tb.removerows(list(range(1, tb.nrows())))
    tb.close()
    tb.open(msname, nomodify=False)
    tb.putcol("OBSERVATION_ID", np.zeros(tb.nrows(), np.int32))
    times = tb.getcol("TIME")
    tb.close()
    tb.open(msname + "/OBSERVATION", nomodify=False)
    if tb.nrows() > 1:
        tb.removerows(list(range(1, tb.nrows())))
    tb.putcell("TIME_RANGE", 0, np.array([times.min() - 3.0, times.max() + 3.0]))
    tb.putcell("PROJECT", 0, spec["project"])
    tb.putcell("OBSERVER", 0, "alma-regen synth")
    tb.close()


def predict_components(msname, clname):
    """DATA = the components of clname, through the primary beam."""
    sm = simulator()
    sm.openfromms(msname)
    sm.setvp(dovp=True, usedefaultvp=True)
    sm.predict(complist=clname, incremental=False)
    sm.close()


def predict(spec, msname, workdir):
    """True visibilities of the known sources, attenuated by the primary beam."""
    cl = componentlist()
    clname = os.path.join(workdir, "truth.cl")
    shutil.rmtree(clname, ignore_errors=True)
    cal = spec["calibrator"]
    cl.addcomponent(dir="J2000 %s %s" % (cal["ra"], cal["dec"]), flux=cal["flux_jy"], fluxunit="Jy",
                    freq="%.6fGHz" % spec["ref_freq_ghz"], shape="point",
                    spectrumtype="spectral index", index=cal["spix"])
    for s in spec["target"]["sources"]:
        cl.addcomponent(dir="J2000 %s %s" % (s["ra"], s["dec"]), flux=s["flux_jy"], fluxunit="Jy",
                        freq="%.6fGHz" % spec["ref_freq_ghz"], shape="point")
    pol = spec.get("polcal")
    if pol:  # its Stokes I here; corrupt_polarised adds its Q, U
        cl.addcomponent(dir="J2000 %s %s" % (pol["ra"], pol["dec"]), flux=pol["flux_jy"], fluxunit="Jy",
                        freq="%.6fGHz" % spec["ref_freq_ghz"], shape="point")
    cl.rename(clname)
    cl.close()
    unit = unit_line_source(spec, msname, workdir)
    predict_components(msname, clname)
    add_line(spec, msname, unit)


def line_profile(spec):
    """Flux (Jy) of the target's spectral line, per channel of its spw."""
    line = spec["target"]["line"]
    chan = np.arange(spec["spws"][line["spw"]]["nchan"])
    sigma = line["fwhm_chan"] / (2 * math.sqrt(2 * math.log(2)))
    return line["peak_jy"] * np.exp(-0.5 * ((chan - line["center_chan"]) / sigma) ** 2)


def _line_rows(spec):
    return "DATA_DESC_ID==%d" % spec["target"]["line"]["spw"]


def unit_line_source(spec, msname, workdir):
    """The line's source alone at a flat 1 Jy, in the line's spw (primary beam
    and phases channel by channel). The simulator evaluates a component's
    spectrum once per spw, so a tabular spectrum cannot make a line; this,
    scaled by the line profile, does. Predict it before the continuum: a
    predict overwrites DATA in every spw."""
    line = spec["target"]["line"]
    src = next(s for s in spec["target"]["sources"] if s["name"] == line["source"])
    cl = componentlist()
    clname = os.path.join(workdir, "line.cl")
    shutil.rmtree(clname, ignore_errors=True)
    cl.addcomponent(dir="J2000 %s %s" % (src["ra"], src["dec"]), flux=1.0, fluxunit="Jy",
                    freq="%.6fGHz" % spec["ref_freq_ghz"], shape="point")
    cl.rename(clname)
    cl.close()
    predict_components(msname, clname)
    tb.open(msname)
    sub = tb.query(_line_rows(spec))
    unit = sub.getcol("DATA")
    sub.close()
    tb.close()
    return unit


def add_line(spec, msname, unit):
    """DATA += line profile x the unit source, in the line's spw."""
    tb.open(msname, nomodify=False)
    sub = tb.query(_line_rows(spec))
    sub.putcol("DATA", (sub.getcol("DATA") + unit * line_profile(spec)[None, :, None]).astype(np.complex64))
    sub.close()
    tb.close()


def corrupt(spec, eb, msname, model_path):
    """DATA = g_i g_j* B_i B_j* V_true + noise, plus one RFI burst; returns the truth.

    Antenna gains are shared by all spws (same electronics, same atmosphere);
    each spw has its own bandpass. Spws differ in shape, so each is written
    through its own selection of the main table.
    """
    rng = np.random.default_rng(eb["seed"])
    nant, npol = spec["antennas"], 2
    gain_amp = rng.uniform(0.75, 1.25, (nant, npol))
    phase0 = rng.uniform(-np.pi, np.pi, (nant, npol))
    # Phase drifts linearly (up to 30 deg per 10 min): linear interpolation
    # between calibrator scans recovers it, as on a good night at ALMA.
    rate = rng.uniform(-1, 1, (nant, npol)) * np.radians(30) / 600.0
    bp_ripple_phase = rng.uniform(0, 1, (nant, 1))
    bp_slope = np.radians(rng.uniform(-20, 20, (nant, 1)))
    sigma = spec["noise_jy"]
    rfi_ant = spec["rfi"]["antenna"]
    tb.open(msname, nomodify=False)
    t_all, f_all = tb.getcol("TIME"), tb.getcol("FIELD_ID")
    t_start = t_all.min()
    tgt_times = np.unique(t_all[f_all == 1])
    burst = (tgt_times[len(tgt_times) // 3], tgt_times[len(tgt_times) // 3 + 3])
    rfi_rows = 0
    model = {}
    for ddid in range(len(spec["spws"])):
        sub = tb.query("DATA_DESC_ID==%d" % ddid)
        data = sub.getcol("DATA")
        a1, a2, t = sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2"), sub.getcol("TIME")
        _, nchan, nrow = data.shape
        # The true visibilities, kept beside the archive (not in it) so tests
        # can compare a regenerated MS with the truth row by row.
        model.update({"time%d" % ddid: t, "a1_%d" % ddid: a1, "a2_%d" % ddid: a2, "model%d" % ddid: data})
        dt = t - t_start
        gains = gain_amp[:, :, None] * np.exp(1j * (phase0[:, :, None] + rate[:, :, None] * dt[None, None, :]))
        rows = np.arange(nrow)
        gi, gj = gains[a1, :, rows].T, gains[a2, :, rows].T  # (npol, nrow)
        # Bandpass: a few per cent amplitude ripple and a phase slope, per antenna.
        chan = np.arange(nchan) / max(nchan - 1, 1)
        bp = (1 + 0.05 * np.sin(2 * np.pi * (chan[None, :] + bp_ripple_phase))) * np.exp(1j * bp_slope * (chan[None, :] - 0.5))
        bpi, bpj = bp[a1].T, bp[a2].T  # (nchan, nrow)
        corr = (gi * np.conj(gj))[:, None, :] * (bpi * np.conj(bpj))[None, :, :]
        noise = rng.normal(0, sigma, data.shape) + 1j * rng.normal(0, sigma, data.shape)
        out = data * corr + noise
        if ddid == 0:
            # RFI: a strong burst on one antenna in one target scan, channels
            # 2-3 of spw 0. The pipeline flags it; a restore that forgets
            # Pipeline_Final keeps it.
            sel = ((a1 == rfi_ant) | (a2 == rfi_ant)) & (t >= burst[0]) & (t <= burst[1])
            rfi_rows = int(sel.sum())
            out[:, 2:4, sel] += spec["rfi"]["amp_jy"] * np.exp(1j * rng.uniform(0, 2 * np.pi, (npol, 2, rfi_rows)))
        sub.putcol("DATA", out.astype(np.complex64))
        sub.putcol("SIGMA", np.full((npol, nrow), sigma * math.sqrt(2), np.float32))
        sub.putcol("WEIGHT", np.full((npol, nrow), 1 / (2 * sigma ** 2), np.float32))
        sub.close()
    tb.close()
    np.savez_compressed(model_path, **model)
    return {
        "gain_amp": gain_amp.round(4).tolist(),
        "rfi": {"antenna": rfi_ant, "spw": 0, "channels": [2, 3], "rows": rfi_rows,
                "time_mjd_s": [float(burst[0]), float(burst[1])]},
    }


# ---------------------------------------------------------------- polarisation

def parallactic_angles(spec, field, times, msname):
    """Parallactic angle plus the X receptor angle (rad) of `field` at each time (MJD s),
    as CASA's P-Jones for linear feeds rotates by."""
    qa = quanta()
    obs = me.observatory("ALMA")
    lat = me.measure(obs, "WGS84")["m1"]["value"]
    me.doframe(obs)
    feed = table()  # not the module's tb: the caller holds it open on the main table
    feed.open(msname + "/FEED")
    receptor = float(feed.getcol("RECEPTOR_ANGLE")[0, 0])
    feed.close()
    direction = me.direction("J2000", field["ra"], field["dec"])
    out = {}
    for t in np.unique(times):
        me.doframe(me.epoch("UTC", qa.quantity(float(t), "s")))
        hadec = me.measure(direction, "HADEC")
        h, d = hadec["m0"]["value"], hadec["m1"]["value"]
        out[t] = math.atan2(math.sin(h) * math.cos(lat), math.sin(lat) * math.cos(d) - math.cos(lat) * math.sin(d) * math.cos(h)) + receptor
    return np.array([out[t] for t in times])


def corrupt_polarised(spec, eb, msname, model_path):
    """Full polarisation: DATA = J_i P V_sky P^T J_j^H + noise, J = B G D X per antenna.

    V_sky: the predicted (unpolarised) visibilities, plus the polarisation calibrator's
    fractional Q, U; P: the parallactic angle rotation of linear feeds; X: an X-Y phase
    per spw; D: leakage per antenna and feed; G: gains whose X and Y share the phase
    drift (X-Y differ by a constant, as ALMA's), B: a bandpass per antenna. The leakage
    and the X-Y offsets are the antennas' own: the same in every EB. The sky-frame
    model goes to MODEL.npz (what a calibration with parang=True must give back)."""
    rng = np.random.default_rng(eb["seed"])
    # What belongs to the antennas' hardware is the same in every EB (hifa_polcal solves it once
    # per session): the leakage and each antenna's X-Y phase offset. Gains and drifts are the EB's.
    hardware = np.random.default_rng(spec["seed"] * 7919 + 1)
    nant, pol = spec["antennas"], spec["polarisation"]
    dterms = (hardware.normal(0, pol["leakage"], (nant, 2)) + 1j * hardware.normal(0, pol["leakage"], (nant, 2)))
    xy_offset = hardware.uniform(-1, 1, nant)
    gain_amp = rng.uniform(0.8, 1.2, (nant, 2))
    phase0 = rng.uniform(-np.pi, np.pi, nant)[:, None] + np.stack([np.zeros(nant), xy_offset], 1)
    rate = (rng.uniform(-1, 1, nant) * np.radians(pol["phase_drift_deg_per_10min"]) / 600.0)[:, None]
    xy_phase = np.radians(pol["xy_phase_deg"])
    bp_phase = np.radians(rng.uniform(-15, 15, (nant, 1)))
    sigma = spec["noise_jy"]
    polcal_id = len(fields(spec)) - 1
    q, u = spec["polcal"]["q"], spec["polcal"]["u"]
    tb.open(msname, nomodify=False)
    t_start = tb.getcol("TIME").min()
    model = {}
    for ddid in range(len(spec["spws"])):
        sub = tb.query("DATA_DESC_ID==%d" % ddid)
        sky = sub.getcol("DATA")  # XX XY YX YY
        a1, a2, t, fid = sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2"), sub.getcol("TIME"), sub.getcol("FIELD_ID")
        on = fid == polcal_id
        stokes_i = 0.5 * (sky[0] + sky[3])
        sky[0, :, on] += (q * stokes_i[:, on]).T
        sky[3, :, on] -= (q * stokes_i[:, on]).T
        sky[1, :, on] += (u * stokes_i[:, on]).T
        sky[2, :, on] += (u * stokes_i[:, on]).T
        model.update({"time%d" % ddid: t, "a1_%d" % ddid: a1, "a2_%d" % ddid: a2, "model%d" % ddid: sky.copy()})
        chi = np.zeros(t.size)
        for f, field in enumerate(fields(spec)):
            rows = fid == f
            if rows.any():
                chi[rows] = parallactic_angles(spec, field, t[rows], msname)
        nchan, nrow = sky.shape[1], sky.shape[2]
        v = sky.reshape(2, 2, nchan, nrow)  # [[XX, XY], [YX, YY]]
        c, s_ = np.cos(chi), np.sin(chi)
        prot = np.array([[c, s_], [-s_, c]])  # (2, 2, nrow)
        v = np.einsum("abr,bcfr,dcr->adfr", prot, v, prot)
        chan = np.arange(nchan) / max(nchan - 1, 1)
        dt = t - t_start

        def jones(ant):
            g = gain_amp[ant].T * np.exp(1j * (phase0[ant].T + rate[ant].T * dt[None, :]))  # (2, nrow)
            b = np.exp(1j * bp_phase[ant, 0][None, :] * (chan[:, None] - 0.5))  # (nchan, nrow)
            j = np.zeros((2, 2, nchan, nrow), complex)
            d = dterms[ant]  # (nrow, 2)
            # G D X: rows X, Y; the Y column carries the X-Y phase.
            j[0, 0] = g[0][None, :] * b
            j[0, 1] = g[0][None, :] * b * d[:, 0][None, :] * np.exp(1j * xy_phase)
            j[1, 0] = g[1][None, :] * b * d[:, 1][None, :]
            j[1, 1] = g[1][None, :] * b * np.exp(1j * xy_phase)
            return j

        ji, jj = jones(a1), jones(a2)
        obs = np.einsum("abfr,bcfr,dcfr->adfr", ji, v, np.conj(jj)).reshape(4, nchan, nrow)
        obs += rng.normal(0, sigma, obs.shape) + 1j * rng.normal(0, sigma, obs.shape)
        sub.putcol("DATA", obs.astype(np.complex64))
        sub.putcol("SIGMA", np.full((4, nrow), sigma * math.sqrt(2), np.float32))
        sub.putcol("WEIGHT", np.full((4, nrow), 1 / (2 * sigma ** 2), np.float32))
        sub.close()
    tb.close()
    np.savez_compressed(model_path, **model)
    return {"gain_amp": gain_amp.round(4).tolist(), "xy_phase_deg": pol["xy_phase_deg"],
            "dterms": [[[round(float(x.real), 5), round(float(x.imag), 5)] for x in row] for row in dterms],
            "rfi": None}


POL_INTENTS = "POLARIZATION,POLANGLE,POLLEAKAGE"  # hifa_polcal's intent (its calapply lines)


def polcal_line(spec, lines):
    """The polarisation calibrator's line: the target's tables (the phase calibrator's gains)."""
    target = next(kw for kw in lines if kw["intent"] == almaopts.TARGET_PIPELINE_INTENTS)
    return dict(target, field=spec["polcal"]["name"], intent=POL_INTENTS)


def polcal_names(session_ms, spws):
    """hifa_polcal's tables, as the pipeline's caltable namer writes them: <vis>.hifa_polcal.s<stage>_<n>.
    spw<ids>.solint<solint, ',' as '_'>.<gcal|pcal|gacal>.tbl."""
    base = "%s.hifa_polcal.s20_%%d.spw%s.%%s.tbl" % (session_ms, "_".join(map(str, spws)))
    return {"kcross": base % (3, "solintinf_5MHz.gcal"), "xyphase": base % (4, "solintinf_5MHz.pcal"),
            "leakage": base % (7, "solintinf_5MHz.pcal"), "xyratio": base % (8, "solintinf.gacal")}


def solve_session_polcal(spec, session, members, lines_of, work):
    """hifa_polcal for one session: the polarisation calibrator of every EB, calibrated by its
    EB's tables, concatenated into <session>_polcalib.ms, then XY delay (KCROSS), XY phase and
    source Q, U (Xfparang+QU), leakage (Dflls), X/Y amplitude ratio. Returns the tables (paths)
    and the solved fractional Q, U."""
    pol = spec["polcal"]["name"]
    science = [i for i, w in enumerate(spec["spws"]) if w["nchan"] > 4]
    parts = []
    for vis in members:
        apply_as_restore(vis, [kw for kw in lines_of[vis] if kw["field"] == pol], vis + ".calapply(polcal)")
        out = vis[:-3] + ".polcalib.ms"
        shutil.rmtree(out, ignore_errors=True)
        mstransform(vis=vis, outputvis=out, intent="CALIBRATE_POLARIZATION*", spw=id_ranges(science),
                    datacolumn="corrected", reindex=False)
        parts.append(out)
    session_ms = session + "_polcalib.ms"
    sess = os.path.join(work, session_ms)
    shutil.rmtree(sess, ignore_errors=True)
    concat(vis=parts, concatvis=sess)
    names = {k: os.path.join(work, v) for k, v in polcal_names(session_ms, science).items()}
    for path in names.values():
        shutil.rmtree(path, ignore_errors=True)
    refant = "DA%02d" % (41 + spec["refant"])
    scan_s = max(scan[1] for scan in spec["scans"] if scan[0] == "polcal")
    q, u = spec["polcal"]["q"], spec["polcal"]["u"]
    gaincal(vis=sess, caltable=names["kcross"], gaintype="KCROSS", solint="inf,5MHz", combine="obs,scan",
            smodel=[1, q, u, 0], refant=refant, parang=True)
    solved = polcal(vis=sess, caltable=names["xyphase"], poltype="Xfparang+QU", solint="inf,5MHz",
                    combine="obs,scan", preavg=scan_s, smodel=[1, q, u, 0], gaintable=[names["kcross"]],
                    interp=["nearest"])
    qu = _solved_qu(solved)
    polcal(vis=sess, caltable=names["leakage"], poltype="Dflls", solint="inf,5MHz", combine="obs,scan",
           preavg=scan_s, smodel=[1, qu[0], qu[1], 0], refant="", gaintable=[names["kcross"], names["xyphase"]],
           interp=["nearest", "nearest"])
    # The polarisation recomputed once calibrated (as hifa_polcal does before its X/Y ratio): the
    # Xfparang+QU estimate runs some 20 % high here, and the X/Y ratio solved against it would
    # pass that on to every field as instrumental Stokes Q.
    applycal(vis=sess, gaintable=[names["kcross"], names["xyphase"], names["leakage"]], interp=["nearest"] * 3,
             parang=True, calwt=False, flagbackup=False)
    qu = _calibrated_qu(sess)
    smodel = [1, qu[0], qu[1], 0]
    gaincal(vis=sess, caltable=names["xyratio"], calmode="a", solint="inf", combine="obs,scan", smodel=smodel,
            refant=refant, solnorm=True, parang=True,
            gaintable=[names["kcross"], names["xyphase"], names["leakage"]], interp=["nearest"] * 3)
    for part in parts:
        shutil.rmtree(part)
    return names, {"q": qu[0], "u": qu[1], "session_ms": session_ms}


def _calibrated_qu(vis):
    """Fractional Q, U of the calibrated (sky-frame) XX XY YX YY of an MS, over its unflagged data."""
    t = table()
    t.open(vis)
    try:
        data, flag = t.getcol("CORRECTED_DATA"), t.getcol("FLAG")
    finally:
        t.close()
    ok = ~flag.any(axis=0)
    xx, xy, yx, yy = (data[i][ok] for i in range(4))
    i = np.sum(xx + yy)
    return float(np.real(np.sum(xx - yy) / i)), float(np.real(np.sum(xy + yx) / i))


def _solved_qu(returned):
    """Fractional Q, U of the spw average from polcal's Xfparang+QU return value."""
    for value in returned.values():
        if isinstance(value, dict) and "SpwAve" in value:
            ave = value["SpwAve"]
            return float(ave[1]) / float(ave[0]), float(ave[2]) / float(ave[0])
    raise RuntimeError("polcal Xfparang+QU returned no Q, U: %r" % (returned,))


def with_session_tables(spec, lines, tables):
    """Every line gets the session's XY delay, XY phase and leakage (interp 'nearest', calwt False,
    as hifa_polcal registers them for all intents); the lines of the other calibrators and the
    target also the X/Y ratio (registered for AMPLITUDE, BANDPASS, CHECK, PHASE, TARGET)."""
    out = []
    for kw in lines:
        extra = [tables["kcross"], tables["xyphase"], tables["leakage"]]
        if kw["intent"] != POL_INTENTS:
            extra.append(tables["xyratio"])
        out.append(dict(kw, gaintable=kw["gaintable"] + extra, gainfield=kw["gainfield"] + [""] * len(extra),
                        spwmap=kw["spwmap"] + [[]] * len(extra), interp=kw["interp"] + ["nearest"] * len(extra),
                        calwt=kw["calwt"] + [False] * len(extra)))
    return out


def export_asdm(spec, eb, msname, asdm):
    shutil.rmtree(asdm, ignore_errors=True)
    archive, rng_id, _ = eb["uid"].replace("uid://", "").split("/")
    exportasdm(vis=msname, asdm=asdm, datacolumn="DATA", archiveid=archive, rangeid=rng_id,
               subscanduration="%ds" % max(scan[1] for scan in spec["scans"]))
    fix_asdm(spec, eb, asdm)


_ROW = re.compile(r"<row>.*?</row>", re.S)


def _field(row, name):
    m = re.search(r"<%s>\s*(.*?)\s*</%s>" % (name, name), row, re.S)
    return m.group(1) if m else None


def _set(row, name, value):
    return re.sub(r"(<%s>).*?(</%s>)" % (name, name), r"\g<1> %s \g<2>" % value, row, count=1, flags=re.S)


def fix_asdm(spec, eb, asdm):
    """Give the exported ASDM ALMA's scan structure, intents and EB uid.

    exportasdm writes a single scan with one intent and time-cut subscans.
    ALMA ASDMs have one scan per source visit with its intents; we regroup
    the subscans (and the Main rows pointing at them) into scans by time and
    field, and write Scan.xml with ALMA's intents. The binary data are not
    touched.
    """
    def read(name):
        with open(os.path.join(asdm, name), encoding="iso-8859-1") as f:
            return f.read()

    def write(name, text):
        with open(os.path.join(asdm, name), "w", encoding="iso-8859-1") as f:
            f.write(text)

    cal_name = spec["calibrator"]["name"]
    sub_xml = read("Subscan.xml")
    subs = _ROW.findall(sub_xml)
    # Subscans in time order; a new scan starts where the field changes or a gap opens.
    info = sorted(((int(_field(r, "startTime")), int(_field(r, "endTime")), _field(r, "fieldName"),
                    int(_field(r, "subscanNumber")), r) for r in subs))
    scans, mapping = [], {}
    for start, end, fname, old, _ in info:
        if not scans or scans[-1]["field"] != fname or start > scans[-1]["end"] + 1:
            scans.append({"field": fname, "start": start, "end": end, "subs": 0})
        s = scans[-1]
        s["end"] = max(s["end"], end)
        s["subs"] += 1
        mapping[old] = (len(scans), s["subs"])
    new_sub = sub_xml
    for r in subs:
        scan, sub = mapping[int(_field(r, "subscanNumber"))]
        new_sub = new_sub.replace(r, _set(_set(r, "scanNumber", scan), "subscanNumber", sub), 1)
    write("Subscan.xml", new_sub)

    main_xml = read("Main.xml")
    for r in _ROW.findall(main_xml):
        scan, sub = mapping[int(_field(r, "subscanNumber"))]
        main_xml = main_xml.replace(r, _set(_set(r, "scanNumber", scan), "subscanNumber", sub), 1)
    write("Main.xml", main_xml)

    scan_xml = read("Scan.xml")
    template = _ROW.findall(scan_xml)[0]
    rows = []
    for i, s in enumerate(scans, 1):
        intents = (spec.get("field_intents", {}).get(s["field"])
                   or (almaopts.CAL_INTENTS if s["field"] == cal_name else almaopts.TARGET_INTENTS)).split(",")
        names = [x.split("#")[0] for x in intents]
        row = template
        row = _set(row, "scanNumber", i)
        row = _set(row, "startTime", s["start"])
        row = _set(row, "endTime", s["end"])
        row = _set(row, "numIntent", len(names))
        row = _set(row, "numSubscan", s["subs"])
        row = _set(row, "scanIntent", "1 %d %s" % (len(names), " ".join(names)))
        row = _set(row, "calDataType", "1 %d %s" % (len(names), " ".join(["FULL_RESOLUTION_CROSS"] * len(names))))
        row = _set(row, "calibrationOnLine", "1 %d %s" % (len(names), " ".join(["false"] * len(names))))
        rows.append(row)
    head, tail = scan_xml.split(template, 1)
    tail = _ROW.sub("", tail)
    write("Scan.xml", head + "\n  ".join(rows) + tail)

    asdm_xml = read("ASDM.xml")
    asdm_xml = re.sub(r"(<Name>\s*Scan\s*</Name>\s*<NumberRows>)\s*\d+\s*", r"\g<1> %d " % len(scans), asdm_xml)
    # The same seed gives the same bytes: creation time = the observing date.
    asdm_xml = re.sub(r"(<TimeOfCreation>)[^<]*", r"\g<1> %s " % spec["date_iso"], asdm_xml)
    write("ASDM.xml", asdm_xml)

    eb_xml = read("ExecBlock.xml")
    eb_xml = re.sub(r'(<execBlockUID>\s*<EntityRef entityId=")[^"]*', r"\g<1>" + eb["uid"], eb_xml)
    write("ExecBlock.xml", eb_xml)
    return len(scans)


def import_ms(asdm, vis):
    for p in (vis, vis + ".flagversions"):
        shutil.rmtree(p, ignore_errors=True)
    importasdm(asdm=asdm, vis=vis, **almaopts.IMPORTASDM_OPTIONS)


def calibrate(spec, eb, vis, caldir, truth_eb):
    """What the pipeline does to one EB; returns the calapply lines (as kwargs)."""
    ebname = os.path.basename(vis)[:-3]
    cal, tgt = spec["calibrator"]["name"], spec["target"]["name"]
    refant = "DA%02d" % (41 + spec["refant"])
    # Flags: the RFI burst the pipeline's flagging finds, and the band edges.
    rfi = truth_eb["rfi"]
    if rfi:  # none in the polarisation style
        flagdata(vis=vis, mode="manual", antenna="DA%02d" % (41 + rfi["antenna"]), spw="0:2~3",
                 timerange=_timerange(*rfi["time_mjd_s"]), flagbackup=False)
    science = [i for i, w in enumerate(spec["spws"]) if w["nchan"] > 4]
    edges = ",".join("%d:0;%d" % (i, spec["spws"][i]["nchan"] - 1) for i in science)
    flagdata(vis=vis, mode="manual", spw=edges, flagbackup=False)
    cs = spec["calibrator"]
    setjy(vis=vis, field=cal, standard="manual", fluxdensity=[cs["flux_jy"], 0, 0, 0],
          spix=[cs["spix"], 0], reffreq="%.6fGHz" % spec["ref_freq_ghz"], usescratch=False)
    names = {
        "pre": os.path.join(caldir, ebname + ".ms.hifa_bandpass.s6_1.ALL.channel.solintint.gpcal.tbl"),
        "bp": os.path.join(caldir, ebname + ".ms.hifa_bandpass.s6_3.spw0_1.channel.solintinf.bcal.tbl"),
        "ph": os.path.join(caldir, ebname + ".ms.hifa_timegaincal.s13_2.spw0_1.solintint.gpcal.tbl"),
        "amp": os.path.join(caldir, ebname + ".ms.hifa_timegaincal.s13_4.spw0_1.solintinf.gacal.tbl"),
    }
    for p in names.values():
        shutil.rmtree(p, ignore_errors=True)
    gaincal(vis=vis, caltable=names["pre"], field=cal, solint="int", calmode="p", refant=refant, minsnr=2)
    bandpass(vis=vis, caltable=names["bp"], field=cal, solint="inf", combine="scan", refant=refant,
             solnorm=True, bandtype="B", gaintable=[names["pre"]], minsnr=2)
    gaincal(vis=vis, caltable=names["ph"], field=cal, solint="int", calmode="p", refant=refant,
            gaintable=[names["bp"]], minsnr=2)
    gaincal(vis=vis, caltable=names["amp"], field=cal, solint="inf", calmode="a", refant=refant,
            gaintable=[names["bp"], names["ph"]], minsnr=2)
    shutil.rmtree(names.pop("pre"))
    tables = [names["bp"], names["ph"], names["amp"]]
    # The pipeline applies to the science spws only, and writes pipeline intents.
    common = dict(vis=vis, spw=id_ranges(science), antenna=id_ranges(range(spec["antennas"])), gaintable=tables,
                  spwmap=[[], [], []], calwt=[False, False, False])
    return [
        dict(common, field=cal, intent=almaopts.CAL_PIPELINE_INTENTS, gainfield=["", "", ""],
             interp=["linear,linear", "linear,linear", "linear,linear"]),
        dict(common, field=tgt, intent=almaopts.TARGET_PIPELINE_INTENTS, gainfield=["", cal, cal],
             interp=["linear,linear", "linear,linear", "linear,linear"]),
    ]


def id_ranges(ids):
    """Ids as the pipeline's calibration library writes a selection: runs of
    consecutive ids as 'first~last' ([0, 1, 3] -> '0~1,3')."""
    runs = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else "%d~%d" % (a, b) for a, b in runs)


def apply_as_restore(vis, lines, path, parang=False):
    """Apply the lines as hifa_restoredata does: pipeline intents mapped to the
    MS's obs_modes (CASA selects on those), cross-correlations only; parang=True
    when a hifa_polcal table is among them."""
    md = msmetadata()
    md.open(vis)
    modes = [str(m) for m in md.intents()]
    md.close()
    for n, kw in enumerate(lines, 2):
        applycal(**calapply_parse.for_casa(kw, modes, n, path), parang=parang, **almaopts.APPLYCAL_DEFAULTS)


def save_final_flags(vis, tgz):
    """Pipeline_Final as exportdata saves it, after the apply (calflagstrict
    flags what has no solution), and its tgz: that version and the
    FLAG_VERSION_LIST. No other version was saved, so the list names it alone."""
    flagmanager(vis=vis, mode="save", versionname=almaopts.FINAL_FLAGS, comment=FINAL_FLAGS_COMMENT)
    folder = vis + ".flagversions"
    name = os.path.basename(folder)
    write_tgz(tgz, [(os.path.join(folder, "flags." + almaopts.FINAL_FLAGS), name + "/flags." + almaopts.FINAL_FLAGS),
                    (os.path.join(folder, "FLAG_VERSION_LIST"), name + "/FLAG_VERSION_LIST")])


def _timerange(t0, t1):
    def fmt(t):
        q = me.epoch("UTC", "%.3fs" % t)
        from casatools import quanta
        return quanta().time(q["m0"], form="ymd", prec=9)[0]
    return "%s~%s" % (fmt(t0 - 1.0), fmt(t1 + 1.0))


def write_calapply(path, lines, spec, ebname):
    """calapply.txt as the pipeline writes it: absolute paths in its working dir."""
    where = PIPELINE_WORKDIR.format(project=spec["project"], mous=spec["mous_file"])
    calls = [calapply_parse.format_applycal(dict(
        kw, vis=os.path.join(where, os.path.basename(kw["vis"])),
        gaintable=[os.path.join(where, os.path.basename(g)) for g in kw["gaintable"]])) for kw in lines]
    # A header line, then the calls joined by newlines: no newline at the end.
    with open(path, "w") as f:
        f.write("# Apply file for %s.ms\n" % ebname + "\n".join(calls))


def _neutral(info):
    """Same seed, same bytes: no owner names, no creation times in archives."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = SOURCE_DATE
    return info


def write_tgz(tgz, entries):
    """A gzipped tar of (path, arcname) entries, folders recursively, sorted."""
    import gzip
    with open(tgz, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for path, arcname in entries:
            write_tree(tf, path, arcname)


def write_tree(tf, path, arcname):
    tf.add(path, arcname=arcname, filter=_neutral, recursive=False)
    if os.path.isdir(path):
        for sub in sorted(os.listdir(path)):
            write_tree(tf, os.path.join(path, sub), arcname + "/" + sub)


def normalise_fits_header(path, date_iso):
    """exportfits stamps DATE with the wall clock and tclean records the memory
    it found free (MEMAVAIL): fix both so the same seed gives the same bytes."""
    fixed = {b"DATE    = ": "DATE    = '%s'" % date_iso, b"MEMAVAIL= ": "MEMAVAIL= %20.7E" % 0.0}
    with open(path, "r+b") as f:
        header = f.read(2880 * 8)
        for i in range(0, len(header), 80):
            card = header[i:i + 80]
            key = card[:10]
            if key in fixed:
                f.seek(i)
                f.write(fixed[key].ljust(80).encode("ascii"))
            if card.startswith(b"END     "):
                break


def longest_baseline(vis):
    tb.open(vis)
    uvw = tb.getcol("UVW")
    tb.close()
    return float(np.sqrt((uvw[:2] ** 2).sum(axis=0)).max())


def image_products(spec, vislist, product_dir, workdir):
    """product/: continuum and cube per science spw, from calibrated data.

    Returns the tclean parameters used: the delivery's scriptForImaging.py
    repeats exactly these calls (on the split MSs), as a data reducer's script
    would, so regenerating the images with it must give back product/."""
    tgt = spec["target"]["name"]
    bmax = max(longest_baseline(v) for v in vislist)
    made, calls = [], []
    for i, spw in enumerate(spec["spws"]):
        if spw["nchan"] <= 4:
            continue
        p = imaging_params.derive(spw["freq_ghz"] * 1e9, bmax)
        for mode in ("cont", "cube"):
            base = "member.%s.%s_sci.spw%d.%s.I" % (spec["mous_file"], tgt, i, mode)
            imagename = os.path.join(workdir, base)
            for ext in (".image", ".pb", ".psf", ".residual", ".model", ".sumwt", ".mask", ".image.pbcor"):
                shutil.rmtree(imagename + ext, ignore_errors=True)
            # A cube's every channel holds the sources (niter per channel) and has
            # sqrt(nchan) x the continuum's noise; expected_rms_jy is about twice the
            # continuum noise measured on these data, so the cube's threshold is
            # about 3 x its channel noise, as a data reducer would clean it.
            if mode == "cont":
                niter, threshold = 500, 3 * spec["expected_rms_jy"]
            else:
                niter, threshold = 500 * spw["nchan"], 1.5 * spec["expected_rms_jy"] * math.sqrt(spw["nchan"])
            params = dict(field=tgt, spw=str(i), specmode="mfs" if mode == "cont" else "cube",
                          imsize=[p["imsize"], p["imsize"]], cell=["%.4farcsec" % p["cell_arcsec"]], stokes="I",
                          gridder="standard", deconvolver="hogbom", weighting="briggs", robust=0.5,
                          niter=niter, threshold="%.5fJy" % threshold, pbcor=True)
            tclean(vis=vislist, imagename=imagename, intent="OBSERVE_TARGET#ON_SOURCE", datacolumn="corrected",
                   interactive=False, **params)
            calls.append({"imagename": base, "params": params})
            for suffix in ("pbcor", "pb"):
                src = imagename + (".image.pbcor" if suffix == "pbcor" else ".pb")
                out = os.path.join(product_dir, "%s.%s.fits" % (base, suffix))
                exportfits(imagename=src, fitsimage=out, overwrite=True, dropdeg=False, history=False)
                normalise_fits_header(out, spec["date_iso"])
                made.append(os.path.basename(out))
    return made, calls


def main(spec_path, result_path):
    spec = json.load(open(spec_path))
    member = spec["member_dir"]
    raw, caldir, product = (os.path.join(member, d) for d in ("raw", "calibration", "product"))
    work = os.path.abspath("work")
    for d in (raw, caldir, product, work, spec["truth_dir"]):
        os.makedirs(d, exist_ok=True)
    result = {"casa_version": version_string(), "ebs": []}
    vislist, lines_of = [], {}
    for eb in spec["ebs"]:
        ebname = eb["uid"].replace("uid://", "uid___").replace("/", "_")
        sim = os.path.join(work, ebname + ".sim.ms")
        shutil.rmtree(sim, ignore_errors=True)
        simulate(spec, eb, sim)
        predict(spec, sim, work)
        truth = (corrupt_polarised if spec.get("polarisation") else corrupt)(
            spec, eb, sim, os.path.join(spec["truth_dir"], ebname + ".model.npz"))
        asdm = os.path.join(raw, ebname + ".asdm.sdm")
        export_asdm(spec, eb, sim, asdm)
        shutil.rmtree(sim)
        vis = os.path.join(work, ebname + ".ms")
        import_ms(asdm, vis)
        lines = calibrate(spec, eb, vis, work, truth)
        if spec.get("polarisation"):
            lines = lines + [polcal_line(spec, lines)]
        truth["uid"] = eb["uid"]
        result["ebs"].append(truth)
        vislist.append(vis)
        lines_of[vis] = lines
    if spec.get("polarisation"):
        # hifa_polcal: per session, from the polarisation calibrator of all its EBs.
        for session in sorted({eb["session"] for eb in spec["ebs"]}):
            members = [v for v, eb in zip(vislist, spec["ebs"]) if eb["session"] == session]
            tables, solved = solve_session_polcal(spec, session, members, lines_of, work)
            result.setdefault("polcal", {})[session] = solved
            for v in members:
                lines_of[v] = with_session_tables(spec, lines_of[v], tables)
    for vis, truth in zip(vislist, result["ebs"]):
        ebname = os.path.basename(vis)[:-3]
        lines = lines_of[vis]
        calapply = os.path.join(caldir, ebname + ".ms.calapply.txt")
        write_calapply(calapply, lines, spec, ebname)
        apply_as_restore(vis, lines, calapply, parang=bool(spec.get("polarisation")))
        save_final_flags(vis, os.path.join(caldir, ebname + ".ms.flagversions.tgz"))
        truth["caltables"] = sorted({os.path.basename(g) for kw in lines for g in kw["gaintable"]})
    # One caltables tarball per session, members named <EB>.ms.* (and <session>_polcalib.ms.*) at its top.
    for session in sorted({eb["session"] for eb in spec["ebs"]}):
        uids = {eb["uid"] for eb in spec["ebs"] if eb["session"] == session}
        write_tgz(os.path.join(caldir, "%s.%s.caltables.tgz" % (spec["mous_file"], session)),
                  [(os.path.join(work, name), name) for name in sorted(
                      {name for truth in result["ebs"] if truth["uid"] in uids for name in truth["caltables"]})])
    result["products"], result["imaging_calls"] = image_products(spec, vislist, product, work)
    result["longest_baseline_m"] = max(longest_baseline(v) for v in vislist)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(*args)
