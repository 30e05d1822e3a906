"""Alerts for operators: a run that is late, a run that failed for good.

One message shape, three optional channels (each configured in Settings):
a generic JSON webhook, e-mail (SmtpNotifier, SMTP connection `smtp_default`)
and Slack (SlackWebhookNotifier on a webhook connection). A channel that fails
is logged and does not stop the others. Each alert names the MOUS, the step
and where to look (the run's page / the task log).

- `alma_regen.airflow.deadlines.run_late` is the DeadlineAlert callback (it runs in the triggerer);
- `run_failed` is the DAG's on_failure_callback (once per failed run, after
  the last retry: task retries never reach it).
"""
import json
import logging
import os
import urllib.request
from urllib.parse import quote

from ..config import runtime_settings

log = logging.getLogger(__name__)


def run_url(dag_id: str, run_id: str) -> str:
    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
    return f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def send(event: dict, settings=None) -> list:
    """Deliver `event` on every configured channel; returns the channels that took it."""
    s = settings or runtime_settings()
    text = (f"[alma-regen] {event['event'].replace('_', ' ')}: MOUS {event.get('mous_uid')} "
            f"at step {event.get('step')} (run {event.get('run_id')}): {event.get('log_url')}")
    delivered = []
    if s.notify_webhook:
        try:
            req = urllib.request.Request(s.notify_webhook, data=json.dumps(event).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
            delivered.append("webhook")
        except Exception as exc:  # noqa: BLE001 - one channel must not stop the others
            log.error("alert webhook %s failed: %s", s.notify_webhook, exc)
    if s.notify_email:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier
            SmtpNotifier(to=s.notify_email, subject=text[:120], html_content=f"<pre>{json.dumps(event, indent=1)}</pre>"
                         ).notify({})
            delivered.append("email")
        except Exception as exc:  # noqa: BLE001
            log.error("alert e-mail to %s failed: %s", s.notify_email, exc)
    if s.notify_slack_conn:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
            SlackWebhookNotifier(slack_webhook_conn_id=s.notify_slack_conn, text=text).notify({})
            delivered.append("slack")
        except Exception as exc:  # noqa: BLE001
            log.error("alert to Slack (%s) failed: %s", s.notify_slack_conn, exc)
    if not delivered:
        log.warning("alert not delivered on any channel (none configured?): %s", text)
    return delivered


def run_failed(context):
    """DAG on_failure_callback: the run failed for good (after the last retry)."""
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    conf = getattr(dag_run, "conf", None) or {}
    step = getattr(ti, "task_id", None)
    if step is None and dag_run is not None:
        try:
            failed = [t.task_id for t in dag_run.get_task_instances(state=["failed", "upstream_failed"])]
            step = failed[0] if failed else None
        except Exception:  # noqa: BLE001
            step = None
    event = {
        "event": "run_failed", "mous_uid": conf.get("mous_uid"),
        "dag_id": getattr(dag_run, "dag_id", None), "run_id": getattr(dag_run, "run_id", None),
        "step": step or "unknown", "reason": str(context.get("reason") or context.get("exception") or ""),
    }
    event["log_url"] = getattr(ti, "log_url", None) or run_url(event["dag_id"] or "", event["run_id"] or "")
    send(event)
