"""The Airflow plugin of alma-regen (registered by the `airflow.plugins` entry point).

It grows with the Airflow layer: operator extra links, the "Reprocessing"
view and listeners. Importing it must stay cheap: Airflow loads plugins in
every component.
"""
from airflow.plugins_manager import AirflowPlugin


class AlmaRegenPlugin(AirflowPlugin):
    name = "alma_regen"
