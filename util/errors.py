"""The project's own error types: bad input a user can fix. Commands print them as one 'error:' line and exit
with status 2 (util.run_dir.exit_on_error); any other exception is a bug and keeps its traceback."""


class UsageError(Exception):
    """Bad input (a config, a checkpoint, data, a flag value), with a one-line message: what, where, how to fix."""


class DataError(UsageError, ValueError):
    """A dataset folder or data file that cannot be used."""
