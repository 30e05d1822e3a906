"""ALMA conventions shared by the scripts that run inside CASA.

Kept in one place so the synthetic pipeline (synth_delivery.py) and our
native restore import the ASDMs in exactly the same way, as hifa_restoredata
does: cross and auto correlations, BDF flags applied, no pointing
correction, no online flag commands applied.
"""

IMPORTASDM_OPTIONS = dict(
    ocorr_mode="ca",
    bdfflags=True,
    with_pointing_correction=False,
    applyflags=False,
    process_caldevice=False,
    savecmds=False,
    lazy=False,
)

# The flag version the pipeline leaves and hifa_restoredata restores.
FINAL_FLAGS = "Pipeline_Final"

# The pipeline's applycal defaults, not written in calapply.txt.
APPLYCAL_DEFAULTS = dict(applymode="calflagstrict", flagbackup=False)

# Scan intents as the ALMA correlator labels them.
CAL_INTENTS = "CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_FLUX#ON_SOURCE,CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE"
TARGET_INTENTS = "OBSERVE_TARGET#ON_SOURCE"
