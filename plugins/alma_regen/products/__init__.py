"""Products to object storage: the publish step and what reads published runs.

    publish.py    a member folder's products, fidelity and logs up to S3, the manifest last
    upload.py     objects up to S3, each verified, every file read once
    manifest.py   the manifest and latest.json: the one reader of published runs
    claim.py      one publisher per run id, decided by the store (a conditional write)
    reuse.py      is this MOUS already published with the same inputs and CASA?
    summary.py    the run's summary page (index.html)

No Airflow here; the Airflow layer hands in its clients (alma_regen.airflow.hooks).
"""
