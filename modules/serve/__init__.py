"""Scale-out serving on Ray Serve (``./launch.sh serve``, docs/serve.md).

One ingress deployment takes the API's HTTP requests, reads the checkpoint each one names and
forwards it to a worker deployment with Serve's model multiplexing (model id = the checkpoint's
A1111 title); each worker replica runs the unchanged FastAPI app (``modules.api.create_app``)
in-process on its own ``Services``. Only ``modules.serve.routing`` is importable without ray;
the plain app never imports this package.
"""
