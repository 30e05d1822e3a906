"""The Airflow layer of alma-regen: everything that imports Airflow, thin over the library.

    hooks/       connections -> clients and sources (the only place a connection is read)
    operators/   one library call each: parameters, template_fields, the task's log
    plugin.py    the AirflowPlugin: deadline reference, weight rule, extra links, the view, listeners
    listeners.py run_notes.py   what runs in the task's process around each task
    deadlines.py retries.py priority.py   the run's deadline, retry policy and priority
    alerts.py    late and failed runs told to people (webhook, e-mail, Slack)
    ui.py ui_app.py   the extra links and the "Reprocessing" view

The rest of alma_regen imports no Airflow (tests/test_layout.py checks it), so the
command line and the CASA side never pay for it.
"""
