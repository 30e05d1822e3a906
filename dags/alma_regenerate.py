"""alma_regenerate: regenerate one ALMA MOUS (calibrated MSs and images).

Triggered from the UI form, the CLI (`airflow dags trigger`) or the REST API.
Thin on purpose: every task is an operator over one alma_regen library call,
and nothing heavy is imported here (this file must parse in well under 0.3 s).
"""
from datetime import timedelta

from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, Param

from alma_regen.config import settings
from alma_regen.deadlines import MousSizeDeadline, run_late
from alma_regen.naming import MOUS_PARAM_PATTERN, member_dir
from alma_regen.notify import run_failed
from alma_regen.operators.calibration import (FinishCalibrationOperator, PrepareCalibrationOperator,
                                              RestoreEbOperator)
from alma_regen.operators.imaging import (FidelityOperator, FinishImagingOperator, NativeImagingUnitOperator,
                                          PlanImagingOperator)
from alma_regen.operators.publish import PublishOperator
from alma_regen.operators.run import (CheckPublishedOperator, InspectDeliveryOperator, LockMousOperator,
                                      ReleaseMousOperator)
from alma_regen.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
from alma_regen.retries import task_defaults

S = settings()

PARAMS = {
    "mous_uid": Param(None, type="string", pattern=MOUS_PARAM_PATTERN, title="MOUS",
                      description="The Member ObsUnitSet to regenerate, e.g. uid://A001/X1296/X133.",
                      section="What"),
    "source": Param("request_handler", enum=["request_handler", "s3"], title="Raw data from",
                    description="The archive's request handler (HTTP) or the S3 mirror.", section="What"),
    "calibration": Param("auto", enum=["auto", "restore", "pipeline", "manual"], title="Calibration",
                         description="auto: as the delivery says (restore when it has a restore script). "
                                     "restore: apply the delivered calibration (native, modular CASA). "
                                     "pipeline: rerun the calibration pipeline (needs a pipeline CASA). "
                                     "manual: the delivery's scriptForCalibration files (exact CASA version).",
                         section="How"),
    "imaging": Param("auto", enum=["auto", "pipeline", "script", "native", "none"], title="Imaging",
                     description="auto: pipeline-imaged data with the imaging pipeline (native if no pipeline "
                                 "CASA), script-imaged data with the delivery's scriptForImaging.py.",
                     section="How"),
    "casa_version": Param("", type="string", pattern=r"^$|^\d+\.\d+\.\d+([.-]\d+)?$", title="CASA version",
                          description="Empty: the version in the delivery's README.", section="How"),
    "dosplit": Param(False, type="boolean", title="DOSPLIT", description="Split the science spws.",
                     section="scriptForPI"),
    "spacesaving": Param(1, type="integer", minimum=-1, maximum=3, title="SPACESAVING",
                         description="0 keep all; 1 drop *.ms.split; 2 also *.ms; 3 also *.ms.split.cal; "
                                     "-1 skip the disk check.", section="scriptForPI"),
    "docontsub": Param(False, type="boolean", title="DOCONTSUB",
                       description="Recreate the continuum-subtracted target MSs.", section="scriptForPI"),
    "publish": Param(True, type="boolean", title="Publish", description="Upload the products with a manifest.",
                     section="Products"),
    "force": Param(False, type="boolean", title="Force",
                   description="Redo a MOUS whose products are already published with the same inputs.",
                   section="Products"),
}

# A negative deadline_minutes turns the alert off (`airflow dags test` of Airflow
# 3.3.2 crashes at the end of a run of a DAG with a deadline: apache/airflow#73428).
# The allowance (deadline_seconds / deadline_minutes, else derived from the MOUS size)
# is computed when a run is created: alma_regen.deadlines.MousSizeDeadline.
DEADLINE = None if S.deadline_minutes < 0 else DeadlineAlert(
    reference=MousSizeDeadline(),
    interval=timedelta(0),
    callback=AsyncCallback(run_late, kwargs={"workdir": S.workdir}),
)

with DAG(
    dag_id="alma_regenerate",
    description="Regenerate one ALMA MOUS: stage, calibrate, image, publish",
    schedule=None,
    catchup=False,
    max_active_runs=16,
    params=PARAMS,
    default_args=task_defaults(S),
    user_defined_macros={"member_dir": lambda workdir, mous: f"{workdir}/{member_dir(mous)}"},
    on_failure_callback=run_failed,
    deadline=DEADLINE,
    tags=["alma", "regeneration"],
    doc_md=__doc__,
) as dag:
    mous = "{{ params.mous_uid }}"
    member = "{{ member_dir('" + S.workdir + "', params.mous_uid) }}"
    cal_args = dict(
        member_dir=member,
        engine="{{ {'restore': 'native'}.get(params.calibration, params.calibration) }}",
        casa_version="{{ params.casa_version }}", dosplit="{{ params.dosplit }}",
        spacesaving="{{ params.spacesaving }}", docontsub="{{ params.docontsub }}",
    )
    stage_args = dict(mous_uid=mous, workdir=S.workdir, source="{{ params.source }}",
                      http_conn_id=S.request_handler_conn, aws_conn_id=S.archive_s3_conn)

    lock = LockMousOperator(task_id="lock_mous", mous_uid=mous, workdir=S.workdir, retries=20)
    reuse = CheckPublishedOperator(task_id="check_published", mous_uid=mous, workdir=S.workdir,
                                   source="{{ params.source }}", force="{{ params.force }}",
                                   products_url=S.products_url, http_conn_id=S.request_handler_conn,
                                   aws_conn_id=S.archive_s3_conn, products_conn_id=S.products_s3_conn)
    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", pool=S.staging_pool, **stage_args)
    inspect = InspectDeliveryOperator(task_id="inspect", mous_uid=mous, workdir=S.workdir)
    asdms = StageAsdmOperator.partial(task_id="stage_asdm", pool=S.staging_pool, **stage_args).expand(
        eb_uid=aux.output)
    prep = PrepareCalibrationOperator(task_id="prepare_calibration", **cal_args)
    restore = RestoreEbOperator.partial(task_id="restore_eb", pool=S.casa_pool, queue=S.casa_queue,
                                        **cal_args).expand(eb_uid=prep.output)
    finish = FinishCalibrationOperator(task_id="finish_calibration", pool=S.casa_pool, queue=S.casa_queue,
                                       trigger_rule="none_failed_min_one_success", **cal_args)
    img_args = dict(member_dir=member, engine="{{ params.imaging }}")
    units = PlanImagingOperator(task_id="plan_imaging", pool=S.casa_pool, queue=S.casa_queue, **img_args)
    image = NativeImagingUnitOperator.partial(task_id="image_unit", pool=S.casa_pool, queue=S.casa_queue,
                                              member_dir=member).expand(unit=units.output)
    done = FinishImagingOperator(task_id="finish_imaging", pool=S.casa_pool, queue=S.casa_queue,
                                 trigger_rule="none_failed_min_one_success", **img_args)
    fidelity = FidelityOperator(task_id="fidelity", pool=S.casa_pool, queue=S.casa_queue, member_dir=member)
    publish = PublishOperator(task_id="publish", member_dir=member, to=S.products_url,
                              enabled="{{ params.publish }}", aws_conn_id=S.products_s3_conn)
    release = ReleaseMousOperator(task_id="release_mous", mous_uid=mous, workdir=S.workdir).as_teardown(
        setups=lock)

    lock >> reuse >> aux >> inspect >> asdms >> prep >> restore >> finish >> units >> image >> done
    # The mapped steps are skipped when they map over nothing (an engine that runs
    # whole): the finishing steps then go on from the planning step itself, and
    # are skipped only when everything before was (an already published MOUS).
    prep >> finish
    units >> done
    done >> fidelity >> publish >> release
