"""What the CASA sandbox costs per CASA step (issue 11).

A trivial CASA script (import casatools and casatasks, print the version) run
through CasaRunner, N times with ALMA_REGEN_SANDBOX=bwrap and N times with
none, interleaved so that the machine's load falls on both alike. Prints the
mean and median wall time of each and their difference (seconds per step) and
ratio. The first run of each is a warm-up (page cache) and is not counted.

    .venv/bin/python bench/sandbox.py [--runs 5] [--shell]

--shell runs the script through casashell -c, as delivery scripts run.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from alma_regen.casa.registry import load_registry  # noqa: E402
from alma_regen.casa.runner import CasaRunner  # noqa: E402
from alma_regen.casa.sandbox import sandbox_for  # noqa: E402

SCRIPT = """import os, sys
sys.path.insert(0, os.path.join(os.environ["ALMA_REGEN_INCLUDE"], "casa_scripts"))
import casa_boot  # noqa: F401
import casatools, casatasks  # noqa: F401
print("CASA", casatools.version_string())
"""


def one(mode: str, command, cwd) -> float:
    os.environ["ALMA_REGEN_SANDBOX"] = mode
    t0 = time.monotonic()
    rec = CasaRunner().run(command, cwd, timeout=600)
    wall = time.monotonic() - t0
    assert rec.env["ALMA_REGEN_SANDBOX"] == mode and rec.returncode == 0
    return wall


def fixed_cost(cwd, n=20) -> dict:
    """The sandbox alone: /usr/bin/true started 20 times through bwrap and directly (median, ms)."""
    os.environ["ALMA_REGEN_SANDBOX"] = "bwrap"
    box = sandbox_for(cwd, ["/usr/bin/true"])
    out = {}
    for name, cmd in (("bwrap", box.wrap(["/usr/bin/true"])), ("none", ["/usr/bin/true"])):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=cwd)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1000
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shell", action="store_true", help="through casashell -c")
    a = ap.parse_args(argv)
    casa = load_registry(config="").modular()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        cwd = Path(tmp) / "member.uid___A001_X1_X1"
        cwd.mkdir()
        script = cwd / "trivial.py"
        script.write_text(SCRIPT)
        command = casa.command(script, shell=a.shell)
        times = {"bwrap": [], "none": []}
        for mode in ("bwrap", "none"):
            one(mode, command, cwd)  # warm-up
        for _ in range(a.runs):
            for mode in ("bwrap", "none"):
                times[mode].append(one(mode, command, cwd))
        fixed = fixed_cost(cwd)
    print(f"start-up alone (/usr/bin/true, median of 20): bwrap {fixed['bwrap']:.1f} ms, none {fixed['none']:.1f} ms, "
          f"difference {fixed['bwrap'] - fixed['none']:+.1f} ms")
    for mode, t in times.items():
        print(f"{mode:6s} mean {statistics.mean(t):.3f} s  median {statistics.median(t):.3f} s  "
              f"runs {' '.join(f'{x:.3f}' for x in t)}")
    diff = statistics.mean(times["bwrap"]) - statistics.mean(times["none"])
    ratio = statistics.mean(times["bwrap"]) / statistics.mean(times["none"])
    print(f"sandbox cost per CASA step: {diff:+.3f} s (mean), "
          f"{statistics.median(times['bwrap']) - statistics.median(times['none']):+.3f} s (median); "
          f"ratio {ratio:.3f} ({'casashell -c' if a.shell else 'plain python'}, {a.runs} runs each)")


if __name__ == "__main__":
    main()
