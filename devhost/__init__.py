"""Run the Functions app (`function_app.py`) locally without Azure Functions Core Tools.

`python -m devhost` serves its HTTP functions over uvicorn with the host's routing rules;
`build_asgi_app` gives the same ASGI app to tests.
"""

from __future__ import annotations

from devhost.server import build_asgi_app

__all__ = ["build_asgi_app"]
