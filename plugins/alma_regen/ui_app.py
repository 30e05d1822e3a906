"""The "Reprocessing" view (FastAPI), served by the api-server under /alma-regen (see alma_regen.ui)."""
from __future__ import annotations


def create_app():
    from fastapi import FastAPI
    app = FastAPI(title="ALMA reprocessing")

    @app.get("/api/mous")
    def mous():
        return []

    return app
