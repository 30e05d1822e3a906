"""Run a delivery's scriptForImaging.py unattended (inside the CASA shell).

Usage: casa -c image_script_wrapper.py SCRIPT RESULT.json      (cwd: calibrated/)

The delivery's copy is never edited. Before running it, this wrapper
replaces tclean (and clean, where the CASA has it) in the shell's namespace
by versions that force interactive=False and check that every vis the script
names exists, and makes input()/raw_input() raise: an unattended run cannot
answer. Then it exec()s the script in the CASA shell's namespace, as
scriptForPI runs the delivery's scripts; this is the one place alma-regen runs
delivery code, by design. CASA images the script made but did not export are
exported to FITS afterwards. RESULT lists the calls and files.
This file must not import airflow or alma_regen.
"""
import builtins
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402  (offline guard; the result file)

_G = globals()
_CALLS = []


class UnattendedError(RuntimeError):
    pass


def _fail(message):
    # One clear last line for the runner to quote, then a non-zero exit.
    print("IMAGING SCRIPT FAILED: %s" % message, flush=True)
    sys.exit(3)


def _check_vis(task, vis):
    for v in ([vis] if isinstance(vis, str) else list(vis or [])):
        if v and not os.path.exists(v):
            raise UnattendedError("%s needs %s, which does not exist in %s (was the calibration restored, "
                                  "and split where the script expects *.ms.split.cal?)" % (task, v, os.getcwd()))


def _unattended(name, original):
    def wrapper(*args, **kwargs):
        forced = bool(kwargs.get("interactive"))
        kwargs["interactive"] = False
        _check_vis(name, kwargs.get("vis", args[0] if args else None))
        _CALLS.append({"task": name, "imagename": kwargs.get("imagename"), "interactive_forced_off": forced})
        if forced:
            print("alma-regen: %s(imagename=%r): interactive=True forced off (unattended run)"
                  % (name, kwargs.get("imagename")), flush=True)
        return original(*args, **kwargs)
    wrapper.__name__ = name
    wrapper.__doc__ = original.__doc__
    return wrapper


def _no_input(prompt=""):
    raise UnattendedError("the script asked for input (%r); an unattended run cannot answer" % (prompt,))


def _images_since(t0):
    out = []
    for root, dirs, files in os.walk("."):
        dirs[:] = [d for d in dirs if d != "working" and not d.endswith((".ms", ".split.cal", ".image.pbcor", ".pb"))]
        for d in os.listdir(root):
            p = os.path.join(root, d)
            if d.endswith((".image.pbcor", ".pb")) and os.path.isdir(p) and os.path.getmtime(p) >= t0 - 1:
                out.append(p)
        out += [os.path.join(root, f) for f in files
                if f.endswith(".fits") and os.path.getmtime(os.path.join(root, f)) >= t0 - 1]
    return sorted(set(out))


def main(script, result_path):
    if not os.path.isfile(script):
        _fail("%s does not exist" % script)
    for name in ("tclean", "clean"):
        if name in _G:
            _G[name] = _unattended(name, _G[name])
    builtins.input = _no_input
    builtins.raw_input = _no_input
    t0 = time.time()
    code = compile(open(script).read(), script, "exec")
    namespace = dict(_G, __file__=script, __name__="__main__")
    try:
        exec(code, namespace)
    except UnattendedError as exc:
        _fail(str(exc))
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _fail("the script exited with %r" % (exc.code,))
    made = _images_since(t0)
    fits = [p for p in made if p.endswith(".fits")]
    # A CASA image the script left unexported gets its FITS here, so the
    # fidelity check and publishing see every image it made.
    exported = []
    for img in (p for p in made if not p.endswith(".fits")):
        out = img[: -len(".image.pbcor")] + ".pbcor.fits" if img.endswith(".image.pbcor") else img + ".fits"
        if out not in fits and os.path.normpath(out) not in map(os.path.normpath, fits):
            _G["exportfits"](imagename=img, fitsimage=out, overwrite=True, dropdeg=False)
            exported.append(out)
    casa_boot.write_result(result_path, {"script": script, "calls": _CALLS, "fits": sorted(fits + exported),
                                         "exported_by_us": exported, "seconds": round(time.time() - t0, 3)})


args = casa_boot.script_args()
if len(args) != 2:
    _fail("usage: image_script_wrapper.py SCRIPT RESULT.json")
main(*args)
