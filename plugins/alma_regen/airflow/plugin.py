"""The Airflow plugin of alma-regen (registered by the `airflow.plugins` entry point).

- `deadline_references`: MousSizeDeadline, the DeadlineAlert reference of
  alma_regenerate (the scheduler deserializes only references a plugin declares);
- operator extra links: the products' summary page and manifest, from the
  publish and image tasks (alma_regen.airflow.ui), as paths without a host so they work
  on whatever host the UI is opened on;
- the "Reprocessing" view: a FastAPI app under /alma-regen plus its entry in
  the UI's navigation (alma_regen.airflow.ui_app; Airflow shows it in a sandboxed iframe,
  so its links open in a new tab through the top window);
- priority_weight_strategies: OperatorRunsFirst (alma_regen.airflow.priority);
- listeners: per-step durations as task metrics and the step a run is in
  (alma_regen.airflow.listeners).

Importing it must stay cheap: Airflow loads plugins in every component. The
FastAPI app is only built by the api-server (a lazy attribute).
"""
from airflow.plugins_manager import AirflowPlugin

from . import listeners, run_notes
from .deadlines import MousSizeDeadline
from .priority import OperatorRunsFirst
from .ui import VIEW_PREFIX, ManifestLink, SummaryPageLink
from .view import LazyApp
from .. import deadlines as _old, priority as _old_priority  # the shims at the old paths


class AlmaRegenPlugin(AirflowPlugin):
    name = "alma_regen"
    # Each also under its name before the move to alma_regen.airflow (for DAG versions
    # serialized before it, and the runs that still use them; one release).
    deadline_references = [MousSizeDeadline, _old.MousSizeDeadline]
    # Operator-triggered reruns go before bulk reprocessing (alma_regen.airflow.priority).
    priority_weight_strategies = [OperatorRunsFirst, _old_priority.OperatorRunsFirst]
    operator_extra_links = [SummaryPageLink(), ManifestLink()]
    listeners = [listeners, run_notes]
    fastapi_apps = [{"app": LazyApp(), "url_prefix": VIEW_PREFIX, "name": "ALMA reprocessing"}]
    external_views = [{
        "name": "Reprocessing",
        "href": f"{VIEW_PREFIX}/",
        "destination": "nav",
        "category": "browse",
        "url_route": "alma-reprocessing",
    }]
