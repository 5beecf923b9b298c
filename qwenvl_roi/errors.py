"""Every error a qwenvl-roi command reports to its user, in one place.

A command catches these and prints one line (file, line and what is wrong) with its exit code; anything
else is a bug and keeps its traceback. The plugin's own errors (settings, cutoff, dataset checks,
compatibility) stay beside the plugin code: they are raised inside LLaMA-Factory's processes.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input to predict or eval: the message names the file, the 1-based line and what is wrong."""

    exit_code = 2


class ConvertError(Exception):
    """A user-facing error of the converters: bad configuration or input that stops a command (the
    message says where)."""

    exit_code = 2  # strict mode's problems are 1 (converters.prepare.StrictModeError)


class OutputError(Exception):
    """An output folder that cannot be written as asked; the message says what is there or what failed."""

    exit_code = 2  # as for any other bad input of a command


class ResumeError(InputError):
    """The partial results on disk belong to a run with other settings (or another job is writing them)."""


class MetricsError(ValueError):
    """The inputs cannot give the requested figure (e.g. no regions, no positives on val)."""


class ContractError(ValueError):
    """A writer built a record that its file's contract refuses: a bug, stopped before the file is written."""


class EncodingError(RuntimeError):
    """The tokenised answer does not line up with its text (tokenizer and template disagree)."""


class UnknownFamilyError(ValueError):
    """A family name or HF model_type that no entry of the family table covers."""


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and its log file."""
