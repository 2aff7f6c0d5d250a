"""Bad input, one home: every error the user caused (a key, a value, a file, a folder) is an `InputError`.

The CLI catches `InputError` alone, prints its message as one line and exits with 2; anything else
is a bug and keeps its traceback. The subclasses say which layer refused the input; their messages
name the offending key, file or folder and fit on one line.
"""


class InputError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


class ConfigError(InputError):
    """Invalid configuration; names the key."""


class DataError(InputError):
    """Unusable data; names the file and, where there is one, the key."""


class RunDirError(InputError):
    """The run directory cannot be used; names the path."""


class SweepError(InputError):
    """Unusable sweep file, storage or study."""


class AnalysisError(InputError):
    """Nothing to analyse at the given path or storage."""


class ExportError(InputError):
    """A source that cannot be exported."""


class ReportError(InputError):
    """Nothing to report at the given paths."""


class ReproduceError(InputError):
    """Unusable reproduce arguments or output folder."""


class DashboardError(InputError):
    """A sweep the dashboard cannot be built for."""
