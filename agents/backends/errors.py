"""Named errors of the GPU backends."""


class BackendUnavailable(RuntimeError):
    """The backend cannot start (no NVML library or driver, no GPU); the message says which."""


class TraceError(ValueError):
    """A replay trace that cannot be read; the message names the file, line and problem."""
