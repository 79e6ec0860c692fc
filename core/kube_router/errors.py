"""The few exceptions the core and plugins share."""


class UsageError(Exception):
    """A flag or flag combination is invalid; start-up stops with exit status 2."""


class PluginLoadError(Exception):
    """A plugin named on the command line is missing or failed to import."""


class TemporaryError(Exception):
    """A sync failed for a reason that may pass; the controller retries after ``delay`` s."""

    def __init__(self, message: str, *, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay
