"""Errors a user can cause. Each message names the problem and the fix; the CLI prints it
without a traceback and the server maps it to its API's error shape."""


class MinervaError(Exception):
    """Base class of every error Minerva raises on purpose."""


class ConfigError(MinervaError):
    """An unknown config key or a bad value (names the key, the value and what is allowed)."""


class ModelLoadError(MinervaError):
    """A model folder or file is missing, corrupt or unsupported (names the file)."""


class RequestError(MinervaError, ValueError):
    """A request the engine refuses, e.g. a prompt longer than max_model_len."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class EngineUnavailableError(MinervaError):
    """The engine takes no new requests right now (HTTP 503); ``retry_after`` is a hint."""

    reason = "unavailable"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(EngineUnavailableError):
    """Every running slot and every place in the waiting queue is taken."""

    reason = "queue_full"


class QueueTimeoutError(EngineUnavailableError):
    """The request waited in the queue longer than queue_timeout without starting."""

    reason = "queue_timeout"


class EngineDrainingError(EngineUnavailableError):
    """The server is shutting down and finishes only the requests it already has."""

    reason = "draining"


class EngineDeadError(EngineUnavailableError):
    """The engine thread stopped (shut down or crashed); nothing more can run."""

    reason = "dead"


class NotSupportedError(MinervaError):
    """The backend serving this model cannot do what was asked (names what can)."""
