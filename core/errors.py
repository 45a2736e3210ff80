"""The one error boundary: what a user can fix is a :class:`UserInputError`.

Every check of user input (an option, a config file, a data file, a run folder, an output path)
raises a subclass of :class:`UserInputError`; the command line prints exactly these as one line
``error: ...`` with exit code 2. Any other exception is a bug in diffuse (or in a plug-in) and
shows its traceback with exit code 1.

:class:`UserInputError` derives from ``ValueError`` (a bad value is what it is), and the
classes for paths also derive from the matching ``OSError`` subclass, so code that catches the
built-in exceptions keeps working.
"""

from __future__ import annotations

__all__ = ["UserInputError", "ConfigError", "ConfigVersionError", "DataError", "CheckpointError", "UnknownNameError",
           "UnknownDomainError", "MissingPathError", "OutputExistsError", "NotWritableError", "IsAFolderError",
           "NotAFolderError", "TrainingDiverged", "NotSupportedError", "WriteFailedError", "InUseError",
           "OutOfMemoryError"]


class UserInputError(ValueError):
    """Input a user can fix: printed by the CLI as one ``error:`` line (exit 2)."""


class ConfigError(UserInputError):
    """A config file, config section or option value that cannot be used."""


class ConfigVersionError(ConfigError):
    """A run config written in a newer format than this diffuse reads."""


class DataError(UserInputError):
    """Bad user data (missing, empty, corrupt, incompatible)."""


class CheckpointError(UserInputError):
    """A run folder, checkpoint or shipped model that cannot be used (missing, corrupt, wrong kind)."""


class UnknownNameError(UserInputError):
    """A name that is not in a registry (a domain, sampler, backbone ...)."""


#: the name the domain registry has always raised
UnknownDomainError = UnknownNameError


class NotSupportedError(UserInputError):
    """A feature the chosen domain or model does not have (e.g. completion of a domain that is not
    completable, a likelihood of a latent model)."""


class MissingPathError(UserInputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output path that already holds something that must not be overwritten."""


class NotWritableError(UserInputError, PermissionError):
    """An output path this process may not write."""


class IsAFolderError(UserInputError, IsADirectoryError):
    """A folder where a file was expected."""


class NotAFolderError(UserInputError, NotADirectoryError):
    """A file where a folder was expected."""


class TrainingDiverged(UserInputError):
    """The training loss (or gradient norm) became non-finite; the last good step is checkpointed
    (the user lowers the learning rate)."""


class WriteFailedError(UserInputError, OSError):
    """Writing a file failed (a full disk, a read-only or vanished folder, a quota): one line naming
    the file, the cause in words and what was kept (``core.io.writing``)."""


class InUseError(UserInputError, BlockingIOError):
    """A run folder (or another output) that another diffuse process is writing now (``core.lock``)."""


class OutOfMemoryError(UserInputError, MemoryError):
    """A model or batch that cannot fit in this machine's memory, refused before it is built
    (``core.memory``)."""
