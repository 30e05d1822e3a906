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

# The ASDM tables hifa_restoredata (pipeline 2025.1) copies verbatim into the MS
# as ASDM_* subtables (the imaging pipeline reads ASDM_SBSUMMARY).
PIPELINE_ASIS = "SBSummary ExecBlock Antenna Annotation Station Receiver Source CalAtmosphere CalWVR CalPointing Pointing"
# ... and the ASDM files it copies into the MS folder after importasdm.
PIPELINE_XML_COPIES = ("Source.xml", "SpectralWindow.xml", "DataDescription.xml")

# The flag version the pipeline leaves and hifa_restoredata restores.
FINAL_FLAGS = "Pipeline_Final"

# The pipeline's applycal defaults, not written in calapply.txt.
APPLYCAL_DEFAULTS = dict(applymode="calflagstrict", flagbackup=False)

# Scan intents as the ALMA correlator labels them (the ASDM's Scan.xml).
CAL_INTENTS = "CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_FLUX#ON_SOURCE,CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE"
TARGET_INTENTS = "OBSERVE_TARGET#ON_SOURCE"

# The same, as the pipeline writes them in calapply.txt (pipeline intents;
# calapply_parse.OBS_MODE_INTENT maps them back to the obs_modes above).
CAL_PIPELINE_INTENTS = "PHASE,AMPLITUDE,BANDPASS"
TARGET_PIPELINE_INTENTS = "TARGET"
