"""Errors a user causes, as opposed to bugs.

The command-line tools print a `UserError`'s message alone, without a
traceback, and exit with status 1: the message names the problem and the fix.
Each subclass is also the built-in exception a caller would expect
(`ConfigError` is a `ValueError`, ...), so `except ValueError` keeps working.
"""


class UserError(Exception):
  """A mistake in what the user gave: config, data, paths, workdir."""


class ConfigError(UserError, ValueError):
  """A config value that is out of range or does not fit the others."""


class DataError(UserError, ValueError):
  """Data that is missing, corrupt, mis-shaped or not what the config says."""


class WorkdirError(UserError, RuntimeError):
  """A workdir that holds another run, or is in use by another process."""
