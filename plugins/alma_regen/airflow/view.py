"""The "Reprocessing" view as the plugin mounts it: built on its first request.

Apart from ui_app.py (the FastAPI app, which imports FastAPI and the ORM) so that the
plugin, which every Airflow component loads, imports neither.
"""


def create_app():
    from .ui_app import create_app as _create
    return _create()


class LazyApp:
    """An ASGI app that builds the FastAPI app on its first request: plugins load in
    every Airflow component, and only the api-server serves it."""

    def __init__(self):
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)
