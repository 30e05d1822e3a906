"""
# Regenerate one ALMA MOUS

Stages the raw data of one Member ObsUnitSet (MOUS) from the ALMA archive,
restores or reruns its calibration with the right CASA, makes its images,
compares them with the images the observatory delivered, and publishes the
products with a manifest.

**To start a run**, press *Trigger* and give the **MOUS uid**
(`uid://A001/X1296/X133`); every other option has a default that follows
what the delivery says. From the command line or the REST API, name the run
after its MOUS (`uid___A001_X1296_X133__20261124T160901`, the uid in file form
then the UTC time):

    airflow dags trigger alma_regenerate --run-id uid___A001_X1296_X133__20261124T160901 \\
        --conf '{"mous_uid": "uid://A001/X1296/X133"}'

Every run's note names its MOUS and its deadline (how long it may take, and why).

**The steps, left to right**

| phase | steps | what they do |
|---|---|---|
| | `lock_mous`, `check_published` | one run per MOUS at a time; stop here if the MOUS is already published with the same inputs and CASA (`force` redoes it) |
| staging | `stage_auxiliary`, `inspect`, `stage_asdm` (one per EB), `check_staged` | README, scripts and calibration tables; the plan (what will be staged, which CASA, which engines); the raw ASDMs; whether everything is there to calibrate |
| calibration | `prepare_calibration`, `restore_eb` (one per EB), `finish_calibration` | the calibrated measurement sets |
| imaging | `plan_imaging`, `image_unit` (one per target and spw), `finish_imaging`, `fidelity` | the images, and how close they are to the delivered ones |
| publishing | `publish` | products, summary page and manifest to the products bucket; then the working folder is cleaned as *Working space* says (kept by default) |
| | `release_mous` | always runs: frees the MOUS for the next run |

**Skipped steps** say why in their log, and here:

- every step after `check_published` is skipped when the MOUS is already published
  with the same inputs and CASA (trigger again with *Force* to redo it);
- `restore_eb` is skipped when the calibration engine runs whole (pipeline, manual,
  scriptForPI): `finish_calibration` runs it;
- `image_unit` is skipped when the imaging engine runs whole (the delivery's
  script, the imaging pipeline) or when *Imaging* is `none`: `finish_imaging` runs it;
- `publish` is skipped when *Publish* is off or no products bucket is configured.

A step that fails for a reason that can pass (the archive busy, a network fault)
is retried; one that cannot (a bad uid, a missing CASA version, a corrupt file)
fails at once with the reason in its log. A late run and a failed run each send
one alert.
"""
from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, Param, TaskGroup

from alma_regen.config import settings
from alma_regen.airflow.deadlines import mous_size_deadline, run_late
from alma_regen.naming import MOUS_PARAM_PATTERN
from alma_regen.airflow.alerts import run_failed
from alma_regen.airflow.operators.calibration import (FinishCalibrationOperator, PrepareCalibrationOperator,
                                              RestoreEbOperator)
from alma_regen.airflow.operators.imaging import (FidelityOperator, FinishImagingOperator, NativeImagingUnitOperator,
                                          PlanImagingOperator)
from alma_regen.airflow.operators.inspection import CheckStagedOperator, InspectDeliveryOperator
from alma_regen.airflow.operators.lock import LockMousOperator, ReleaseMousOperator
from alma_regen.airflow.operators.publish import PublishOperator
from alma_regen.airflow.operators.published import CheckPublishedOperator
from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
from alma_regen.airflow.retries import task_defaults

# Parse time: only the environment. The settings used here are PARSE_TIME ones
# (alma_regen/config.py), which the `alma_regen` Variable does not change anywhere;
# the tasks read the others when they run.
S = settings()
OWNER = "alma-regen"

# The form: only the MOUS must be typed. A field is optional in Airflow's form only
# when its type admits null (an emptied text field is sent as null).
PARAMS = {
    "mous_uid": Param(None, type="string", pattern=MOUS_PARAM_PATTERN, minLength=16, title="MOUS uid",
                      description="The Member ObsUnitSet to regenerate, as the archive writes it: "
                                  "uid://A001/X<hex>/X<hex>, for example uid://A001/X1296/X133 "
                                  "(uid://A002/... for early cycles; not the file form uid___A001_X1296_X133).",
                      section="What"),
    "source": Param("request_handler", enum=["request_handler", "s3"], title="Raw data from",
                    description="request_handler: the ALMA archive's request handler over HTTP (the "
                                "alma_request_handler connection). s3: the S3 mirror of the archive "
                                "(the alma_archive_s3 connection).", section="What"),
    "calibration": Param("auto", enum=["auto", "restore", "pipeline", "manual"], title="Calibration",
                         description="auto: as the delivery says (restore when it has a restore script). "
                                     "restore: apply the delivered calibration (native, modular CASA). "
                                     "pipeline: rerun the calibration pipeline (needs a pipeline CASA). "
                                     "manual: the delivery's scriptForCalibration files (exact CASA version).",
                         section="How"),
    "imaging": Param("auto", enum=["auto", "pipeline", "script", "native", "none"], title="Imaging",
                     description="auto: pipeline-imaged data with the imaging pipeline (native if no pipeline "
                                 "CASA), script-imaged data with the delivery's scriptForImaging.py. "
                                 "pipeline: the ALMA imaging pipeline (needs a pipeline CASA). "
                                 "script: the delivery's scriptForImaging.py, run unattended. "
                                 "native: tclean per target and spw, spread over the workers. "
                                 "none: no images, the calibrated measurement sets only.",
                     section="How"),
    "casa_version": Param(None, type=["null", "string"], pattern=r"^$|^\d+\.\d+\.\d+([.-]\d+)?$",
                          title="CASA version",
                          description="Leave empty for the version the delivery's README names. Or an "
                                      "installed version such as 6.5.4-9 (alma-regen casa-versions lists them).",
                          section="How"),
    "dosplit": Param(False, type="boolean", title="DOSPLIT",
                     description="scriptForPI: split out the science spws (on for script-imaged data anyway).",
                     section="scriptForPI"),
    "spacesaving": Param(1, type="integer", minimum=-1, maximum=3, title="SPACESAVING",
                         description="scriptForPI: 0 keep all; 1 drop *.ms.split; 2 also *.ms; "
                                     "3 also *.ms.split.cal; -1 skip the disk check.", section="scriptForPI"),
    "docontsub": Param(False, type="boolean", title="DOCONTSUB",
                       description="scriptForPI: recreate the continuum-subtracted target MSs.",
                       section="scriptForPI"),
    "publish": Param(True, type="boolean", title="Publish",
                     description="Upload the products, a summary page and a manifest to the products bucket. "
                                 "Off: the products stay in the working folder only.", section="Products"),
    "keep": Param("setting", enum=["setting", "all", "raw", "nothing"], title="Working space",
                  description="What stays of the MOUS's working folder once its products are published and "
                              "verified. setting: as the site's workspace_keep setting says. all: everything. "
                              "raw: what a rerun needs (raw/, script/, calibration/, qa/, log/, product/, "
                              "README); the calibrated data and images go. nothing: the whole folder goes. "
                              "Nothing is removed when the run does not publish.", section="Products"),
    "require_all_ebs": Param(False, type="boolean", title="Require all EBs",
                             description="On: an EB the PPR lists but the archive lacks fails the run. Off: "
                                         "the run goes on with the other EBs, as scriptForPI does, and its "
                                         "manifest records it as partial (partial.missing_ebs).",
                             section="What"),
    "force": Param(False, type="boolean", title="Force",
                   description="Regenerate even a MOUS whose products are already published with the same "
                               "inputs and CASA. Off: such a run stops at check_published and skips the rest.",
                   section="Products"),
}

# A negative deadline_minutes turns the alert off (`airflow dags test` of Airflow
# 3.3.2 crashes at the end of a run of a DAG with a deadline: apache/airflow#73428).
# The allowance (deadline_seconds / deadline_minutes, else derived from the MOUS size)
# is computed when a run is created: alma_regen.airflow.deadlines.MousSizeDeadline.
if S.deadline_minutes < 0:
    DEADLINE = None
else:
    _reference, _interval = mous_size_deadline(S)
    DEADLINE = DeadlineAlert(reference=_reference, interval=_interval, name="each run's note gives its own",
                             callback=AsyncCallback(run_late, kwargs={"workdir": S.workdir}))

with DAG(
    dag_id="alma_regenerate",
    description="Regenerate one ALMA MOUS: stage, calibrate, image, publish",
    schedule=None,
    catchup=False,
    max_active_runs=16,
    params=PARAMS,
    default_args={**task_defaults(S), "owner": OWNER},
    on_failure_callback=run_failed,
    deadline=DEADLINE,
    tags=["alma", "regeneration"],
    doc_md=__doc__,
) as dag:
    mous = "{{ params.mous_uid }}"
    # Every step that works in the MOUS's member folder gets the MOUS and the workdir; it builds
    # the folder's Member (alma_regen.member) itself.
    member = dict(mous_uid=mous, workdir=S.workdir)
    cal_args = dict(
        **member,
        engine="{{ params.calibration }}",  # "restore" is the native engine (calibrated.FORM_NAMES)
        casa_version="{{ params.casa_version or '' }}", dosplit="{{ params.dosplit }}",
        spacesaving="{{ params.spacesaving }}", docontsub="{{ params.docontsub }}",
    )
    stage_args = dict(mous_uid=mous, workdir=S.workdir, source="{{ params.source }}",
                      http_conn_id=S.request_handler_conn, aws_conn_id=S.archive_s3_conn)

    lock = LockMousOperator(task_id="lock_mous", mous_uid=mous, workdir=S.workdir, retries=20,
                            doc_md="Takes the MOUS for this run; waits (retries) while another run has it.")
    reuse = CheckPublishedOperator(task_id="check_published", mous_uid=mous, workdir=S.workdir,
                                   source="{{ params.source }}", force="{{ params.force }}",
                                   products_url=S.products_url, http_conn_id=S.request_handler_conn,
                                   aws_conn_id=S.archive_s3_conn, products_conn_id=S.products_s3_conn,
                                   doc_md="Skipped, with every step after it, when the MOUS is already "
                                          "published with the same inputs and CASA; Force redoes it.")
    with TaskGroup("staging", prefix_group_id=False, tooltip="The MOUS's files from the archive") as stage:
        aux = StageAuxiliaryOperator(task_id="stage_auxiliary", pool=S.staging_pool, **stage_args,
                                     require_all_ebs="{{ params.require_all_ebs }}",
                                     doc_md="README, scripts, calibration tables and delivered products.")
        inspect = InspectDeliveryOperator(task_id="inspect", **stage_args,
                                          require_all_ebs="{{ params.require_all_ebs }}",
                                          spacesaving="{{ params.spacesaving }}",
                                          doc_md="The plan before the raw data come: the EBs to stage and their "
                                                 "size, the CASA version, the engines, the disk needed.")
        asdms = StageAsdmOperator.partial(task_id="stage_asdm", pool=S.staging_pool, **stage_args,
                                          map_index_template="{{ task.eb_uid }}",
                                          doc_md="One EB's raw ASDM (one task per EB).").expand(eb_uid=aux.output)
        staged = CheckStagedOperator(task_id="check_staged", mous_uid=mous, workdir=S.workdir,
                                     require_all_ebs="{{ params.require_all_ebs }}",
                                     spacesaving="{{ params.spacesaving }}",
                                     doc_md="Whether everything is there to calibrate: fails on what is not.")
        aux >> inspect >> asdms >> staged
    with TaskGroup("calibration", prefix_group_id=False, tooltip="The calibrated measurement sets") as calibrate:
        prep = PrepareCalibrationOperator(task_id="prepare_calibration", **cal_args,
                                          doc_md="Chooses the engine and the CASA, and checks the disk.")
        restore = RestoreEbOperator.partial(task_id="restore_eb", pool=S.casa_pool, queue=S.casa_queue,
                                            map_index_template="{{ task.eb_uid }}",
                                            doc_md="The native restore of one EB (one task per EB); skipped when "
                                                   "the engine runs whole (finish_calibration runs it).",
                                            **cal_args).expand(eb_uid=prep.output)
        finish = FinishCalibrationOperator(task_id="finish_calibration", pool=S.casa_pool, queue=S.casa_queue,
                                           trigger_rule="none_failed_min_one_success", **cal_args,
                                           doc_md="Gathers the EBs, or runs an engine that cannot be split.")
        prep >> restore >> finish
        # The mapped steps are skipped when they map over nothing (an engine that runs
        # whole): the finishing steps then go on from the planning step itself, and
        # are skipped only when everything before was (an already published MOUS).
        prep >> finish
    img_args = dict(**member, engine="{{ params.imaging }}")
    with TaskGroup("imaging", prefix_group_id=False, tooltip="The images, checked against the delivered ones") as image:
        units = PlanImagingOperator(task_id="plan_imaging", pool=S.casa_pool, queue=S.casa_queue, **img_args,
                                    doc_md="Chooses the imaging engine; lists the work units of the native one.")
        unit = NativeImagingUnitOperator.partial(task_id="image_unit", pool=S.casa_pool, queue=S.casa_queue,
                                                 **member, map_index_template="{{ task.unit.id }}",
                                                 doc_md="One target and spw of the native engine; skipped when "
                                                        "the engine runs whole (script, pipeline: "
                                                        "finish_imaging runs it) or Imaging is none."
                                                 ).expand(unit=units.output)
        done = FinishImagingOperator(task_id="finish_imaging", pool=S.casa_pool, queue=S.casa_queue,
                                     trigger_rule="none_failed_min_one_success", **img_args,
                                     doc_md="Gathers the units, or runs an engine that cannot be split; "
                                            "skipped when Imaging is none.")
        fidelity = FidelityOperator(task_id="fidelity", pool=S.casa_pool, queue=S.casa_queue, **member,
                                    doc_md="Compares each image with the delivered one; fails on a bad match.")
        units >> unit >> done >> fidelity
        units >> done
    with TaskGroup("publishing", prefix_group_id=False, tooltip="Products and manifest to S3") as products:
        publish = PublishOperator(task_id="publish", **member, to=S.products_url,
                                  enabled="{{ params.publish }}", aws_conn_id=S.products_s3_conn,
                                  doc_md="Uploads the products with a summary page and a manifest, then "
                                         "frees the working space as Working space says; skipped (and "
                                         "nothing removed) when Publish is off or no products bucket is "
                                         "configured.")
    release = ReleaseMousOperator(task_id="release_mous", mous_uid=mous, workdir=S.workdir,
                                  doc_md="Always runs: frees the MOUS for the next run.").as_teardown(setups=lock)

    lock >> reuse >> stage >> calibrate >> image >> products >> release
