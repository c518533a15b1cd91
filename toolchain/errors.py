"""One error type for everything a user can get wrong, with a hint saying what to do next.

The CLI prints ``error: <message>`` and, if present, ``hint: <hint>`` and exits with the
kind's code. Library code raises these; it never prints.
"""

from __future__ import annotations

# Exit codes by kind (sysexits-like, stable: scripts may depend on them).
EXIT_USAGE = 2  # bad argument, unknown name
EXIT_INPUT = 3  # a file is missing, corrupt or of the wrong kind
EXIT_CAPACITY = 4  # does not fit: memory, sequence length, glibc
EXIT_BUILD = 5  # compiler, linker, SDK
EXIT_DEVICE = 6  # target, serial link, runner
EXIT_VALIDATION = 7  # the board's output did not match the reference


class EdgelmError(Exception):
    """A problem the user can act on. ``str(err)`` is the one-line message."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(EdgelmError):
    exit_code = EXIT_USAGE


class InputError(EdgelmError):
    exit_code = EXIT_INPUT


class CapacityError(EdgelmError):
    exit_code = EXIT_CAPACITY


class BuildError(EdgelmError):
    exit_code = EXIT_BUILD


class DeviceError(EdgelmError):
    exit_code = EXIT_DEVICE


class ValidationFailed(EdgelmError):
    exit_code = EXIT_VALIDATION
