"""alma-regen: regenerate ALMA calibrated measurement sets and images.

The library behind the Airflow operators and the `alma-regen` command. Nothing
here imports CASA: CASA runs only in child processes. Nothing here imports
Airflow except `alma_regen.airflow` (hooks, operators, the plugin, listeners,
deadlines, retries, priority, the view), thin over the library; and, for one
release, the shims `alma_regen.priority` and `alma_regen.deadlines` at the
import paths DAGs serialized before that package existed name.
tests/test_layout.py checks both.
"""

__version__ = "0.1.0"
