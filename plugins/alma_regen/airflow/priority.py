"""Reruns an operator triggers go before bulk reprocessing.

alma_bulk_reprocess starts alma_regenerate runs with `"bulk": true` in their
conf; every other run (the UI form, the CLI, the REST API) is an operator's.
Tasks of operator runs get a large weight on top of Airflow's usual
downstream weight, so the scheduler queues them first when pools are full.
Registered by the plugin (`priority_weight_strategies`).
"""
from airflow.task.priority_strategy import PriorityWeightStrategy, _DownstreamPriorityWeightStrategy

OPERATOR_BONUS = 1000


class OperatorRunsFirst(PriorityWeightStrategy):
    def get_weight(self, ti) -> int:
        base = _DownstreamPriorityWeightStrategy().get_weight(ti)
        conf = getattr(getattr(ti, "dag_run", None), "conf", None) or {}
        return base if conf.get("bulk") else base + OPERATOR_BONUS
