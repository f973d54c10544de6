from tests.server.api.dashboard.conftest import policy

__all__ = ["policy"]
