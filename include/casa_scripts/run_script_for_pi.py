"""Run the delivery's scriptForPI.py the way the seed says, unattended.

Started in script/ as `casa [--pipeline] -c run_script_for_pi.py` (or
`python -m casashell -c ...`), so this file runs in CASA's shell namespace.
It sets scriptForPI's global variables from the environment (SPACESAVING,
DOSPLIT, DOCONTSUB, as alma_regen.scriptforpi passes them) and then does
what a person types at the CASA prompt: execfile('scriptForPI.py').
The delivery's script is executed here by design: it is what scriptForPI is.
This file must not import airflow or alma_regen.
"""
import os as _os

_name = _os.environ["ALMA_REGEN_SCRIPT_FOR_PI"]
SPACESAVING = int(_os.environ.get("SPACESAVING", "1"))
DOSPLIT = _os.environ.get("DOSPLIT", "False") == "True"
DOCONTSUB = _os.environ.get("DOCONTSUB", "False") == "True"
print("alma-regen: running %s with SPACESAVING=%s DOSPLIT=%s DOCONTSUB=%s" % (_name, SPACESAVING, DOSPLIT, DOCONTSUB))
with open(_name) as _f:
    _code = compile(_f.read(), _name, "exec")
exec(_code, globals())
