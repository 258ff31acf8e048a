"""Errors that end a command with one clear line and exit code 2 (never a traceback).

Every user-facing mistake (bad config, bad data, bad checkpoint) raises a subclass of
`ExtmemError`; the CLI prints `error: <message>` and exits with status 2.
"""


class ExtmemError(Exception):
    """Base class: a user-facing error whose message names what is wrong and what is allowed."""


class ConfigError(ExtmemError):
    """A config file, override or field value that cannot be used."""


class DataError(ExtmemError):
    """Missing, empty or undecodable data, or a corpus that cannot be loaded."""


class CheckpointError(ExtmemError):
    """A checkpoint that is missing, truncated, corrupted or does not match the config."""


class TrainingError(ExtmemError):
    """Training that cannot go on: a non-finite loss, gradient or weight, a run in use."""
