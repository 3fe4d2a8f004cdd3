"""`resnet serve`: a trained network over HTTP (FastAPI on uvicorn) with dynamic batching, limits, Prometheus
metrics and a web page. `create_app(loader, Settings(...))` is the ASGI application; `resnet/commands/serve.py`
runs it under uvicorn. Needs the `serve` extra (`pip install -e '.[serve]'`)."""

import importlib.util

from resnet.errors import UserError

REQUIRED = ("fastapi", "uvicorn", "prometheus_client", "multipart")  # import names; `multipart` is python-multipart
PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
            "multipart": "python-multipart"}


def check_installed() -> None:
    """Raise a one-line UserError naming the first package of the `serve` extra that is missing."""
    for name in REQUIRED:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"resnet serve needs the package {PACKAGES[name]}: pip install -e '.[serve]' "
                            f"(or pip install {PACKAGES[name]})")
