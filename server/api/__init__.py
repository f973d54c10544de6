"""The verifier's HTTP API (FastAPI): ``create_app(settings)`` builds it."""

from server.api.app import create_app

__all__ = ["create_app"]
