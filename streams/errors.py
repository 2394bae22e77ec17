"""The streams package's named errors."""


class StreamsError(Exception):
    """Base of the streams errors."""


class ConfigError(StreamsError):
    """A worker setting that cannot work (for example a window that does not divide a day)."""
