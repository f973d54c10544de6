from tests.dashboard.conftest import policy

__all__ = ["policy"]
