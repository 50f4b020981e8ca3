"""The error types ecgssl raises on purpose.

Everything a user can cause (bad input, bad config, a missing path) is an `EcgsslError`
whose message names the file or record and what is wrong; the CLI prints it without a
traceback. Anything else is a bug and keeps its traceback.
"""


class EcgsslError(Exception):
    """A problem with the user's input or configuration, explained in the message."""


class ConfigError(EcgsslError):
    """params.yaml or a command-line override is invalid."""


class CorruptFileError(EcgsslError, ValueError):
    """A file a stage wrote (a manifest, a run record, metrics.json) cannot be parsed. Also a
    ValueError, so that readers which treat an unreadable record as absent still do."""


class RecordError(EcgsslError):
    """One record cannot be used; batch jobs quarantine it and go on.

    `kind` is a short stable code for counting and filtering quarantines (missing_file,
    bad_header, truncated, nonfinite, lead_count, unknown_lead, short, flat, bad_metadata).
    """

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind
