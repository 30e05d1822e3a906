"""alma-regen: regenerate ALMA calibrated measurement sets and images.

The library behind the Airflow operators and the `alma-regen` command. Nothing
here imports CASA or Airflow at module level: CASA runs only in child
processes, and Airflow is imported only by the hooks, operators and plugin.
"""

__version__ = "0.1.0"
