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
from casatasks import (applycal, bandpass, exportasdm, exportfits, flagdata,  # noqa: E402
                       flagmanager, gaincal, importasdm, setjy, tclean)
from casatools import componentlist, measures, msmetadata, simulator, table, version_string  # noqa: E402

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
                       nchannels=spw["nchan"], stokes="XX YY")
    sm.setfeed(mode="perfect X Y", pol=[""])
    for f in (spec["calibrator"], spec["target"]):
        sm.setfield(sourcename=f["name"], sourcedirection=me.direction("J2000", f["ra"], f["dec"]),
                    calcode="C" if f is spec["calibrator"] else "")
    sm.setlimits(shadowlimit=0.001, elevationlimit="8.0deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(integrationtime="%ds" % spec["integration_s"], usehourangle=True,
                referencetime=me.epoch("UTC", spec["date"]))
    t = eb["hour_angle_s"]
    for field, dur in spec["scans"]:
        name = spec[field]["name"]
        for spw in spec["spws"]:
            sm.observe(name, spw["name"], starttime="%ds" % t, stoptime="%ds" % (t + dur))
        t += dur + spec["slew_s"]
    sm.close()
    fix_subtables(msname, spec)


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


def export_asdm(spec, eb, msname, asdm):
    shutil.rmtree(asdm, ignore_errors=True)
    archive, rng_id, _ = eb["uid"].replace("uid://", "").split("/")
    exportasdm(vis=msname, asdm=asdm, datacolumn="DATA", archiveid=archive, rangeid=rng_id,
               subscanduration="%ds" % max(d for _, d in spec["scans"]))
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
        intents = (almaopts.CAL_INTENTS if s["field"] == cal_name else almaopts.TARGET_INTENTS).split(",")
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


def apply_as_restore(vis, lines, path):
    """Apply the lines as hifa_restoredata does: pipeline intents mapped to the
    MS's obs_modes (CASA selects on those), cross-correlations only."""
    md = msmetadata()
    md.open(vis)
    modes = [str(m) for m in md.intents()]
    md.close()
    for n, kw in enumerate(lines, 2):
        applycal(**calapply_parse.for_casa(kw, modes, n, path), **almaopts.APPLYCAL_DEFAULTS)


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
    vislist = []
    for eb in spec["ebs"]:
        ebname = eb["uid"].replace("uid://", "uid___").replace("/", "_")
        sim = os.path.join(work, ebname + ".sim.ms")
        shutil.rmtree(sim, ignore_errors=True)
        simulate(spec, eb, sim)
        predict(spec, sim, work)
        truth = corrupt(spec, eb, sim, os.path.join(spec["truth_dir"], ebname + ".model.npz"))
        asdm = os.path.join(raw, ebname + ".asdm.sdm")
        export_asdm(spec, eb, sim, asdm)
        shutil.rmtree(sim)
        vis = os.path.join(work, ebname + ".ms")
        import_ms(asdm, vis)
        lines = calibrate(spec, eb, vis, work, truth)
        calapply = os.path.join(caldir, ebname + ".ms.calapply.txt")
        write_calapply(calapply, lines, spec, ebname)
        apply_as_restore(vis, lines, calapply)
        save_final_flags(vis, os.path.join(caldir, ebname + ".ms.flagversions.tgz"))
        truth["uid"] = eb["uid"]
        truth["caltables"] = sorted({os.path.basename(g) for kw in lines for g in kw["gaintable"]})
        result["ebs"].append(truth)
        vislist.append(vis)
    # One caltables tarball per session, members named <EB>.ms.* at its top.
    for session in sorted({eb["session"] for eb in spec["ebs"]}):
        uids = {eb["uid"] for eb in spec["ebs"] if eb["session"] == session}
        write_tgz(os.path.join(caldir, "%s.%s.caltables.tgz" % (spec["mous_file"], session)),
                  [(os.path.join(work, name), name) for truth in result["ebs"] if truth["uid"] in uids
                   for name in truth["caltables"]])
    result["products"], result["imaging_calls"] = image_products(spec, vislist, product, work)
    result["longest_baseline_m"] = max(longest_baseline(v) for v in vislist)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(*args)
