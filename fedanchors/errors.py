"""Errors a user can cause: they end the CLI with one line and exit code 2."""


class FedAnchorsError(Exception):
    """Base for user-facing errors (bad config, missing or corrupt data, resources)."""


class ConfigError(FedAnchorsError):
    """A config key, value, type or resource request is wrong."""


class DataError(FedAnchorsError):
    """A data file or folder is missing or corrupt."""


class Diverged(FedAnchorsError):
    """A loss, q, anchor or weight went non-finite: the run stops, its last good checkpoint kept."""

    exit_code = 3


class RunFailed(FedAnchorsError):
    """The run cannot produce honest results (e.g. a group lost for too many rounds)."""

    exit_code = 4
