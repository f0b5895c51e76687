"""The HTTP API: AUTOMATIC1111's ``/sdapi/v1`` and Easel's asynchronous ``/easel/v1/jobs``.

``create_app(services)`` builds a plain FastAPI app with every route (the web UI is mounted onto
the same app later); ``add_api(app, services)`` adds the routes and error handlers to an existing
app. The routes translate HTTP into the core's typed requests and submit them to the one job
queue; they hold no generation logic.
"""

from .app import add_api, create_api, create_app

__all__ = ["add_api", "create_api", "create_app"]
