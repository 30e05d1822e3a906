# CASA site configuration used by every CASA child process alma-regen starts
# (the runner points CASASITECONFIG here). CASA must never touch the network:
# measures and run data come from the casadata package on PyPI, and every
# auto-update is off. casaconfig exec()s this file with its defaults in scope.
import casadata as _casadata

measurespath = _casadata.datapath
datapath = [_casadata.datapath]
measures_auto_update = False
data_auto_update = False
# A failed network probe is slow (DNS time-outs): never probe at all.
skipnetworkcheck = True
# GUI-less workers: no logger window, no plotting backend that needs a display.
nologger = True
nogui = True
agg = True
# Keep the user's site-packages out of CASA's interpreter.
user_site = False
