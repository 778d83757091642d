"""The HTTP side: the quart-trio app over the gate, its guard, its OpenAPI document and live page.

Everything here is an adapter: it reads requests, hands them to :mod:`harness.core` and writes
the answers. Nothing in ``core`` or ``store`` imports from here.
"""

from .server import create_app, serve

__all__ = ["create_app", "serve"]
