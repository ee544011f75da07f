"""Lightning callbacks of the platform."""

from recattend.callbacks.teardown import ProcessGroupTeardown

__all__ = ["ProcessGroupTeardown"]
