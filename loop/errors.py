"""The project's own exceptions. The CLI turns each into one clear message and a non-zero exit."""

from __future__ import annotations

# A stage process's exit codes: retryable (the controller tries again) or fatal (a retry would repeat it).
EXIT_RETRYABLE, EXIT_FATAL = 1, 3
# `sealong-loop start`: the run failed past its retry bound; the run stopped before finishing (`stop`,
# `stop --now`, SIGTERM; Ctrl-C / SIGINT gives 130), resumable with `start`
EXIT_FAILED, EXIT_STOPPED = 3, 5


def exit_on_sigterm(signum, frame) -> None:
    """A SIGTERM handler that unwinds like an exception, so `finally` blocks run before the exit."""
    raise SystemExit(128 + signum)


class SealongError(Exception):
    """Base class: an error a user can act on. Its message is printed as is, without a traceback."""

    exit_code = 2


class ConfigError(SealongError):
    """One or more problems in a TOML config, all listed in one message."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem(s) in the config:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(SealongError):
    """A bad record in a data file: names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = path, line, field
        where = path if line is None else f"{path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class WorkdirBusy(SealongError):
    """Another controller holds the workdir's lock."""


class StageFailed(SealongError):
    """A stage failed more often than the retry bound allows."""

    exit_code = 3


class SetupError(SealongError):
    """This machine cannot run the config as it stands (e.g. fewer GPUs than it asks for): a retry would
    fail the same way, so the stage fails at once."""

    fatal = True


class IntegrityError(SealongError):
    """An artifact does not match what the store recorded (e.g. an adapter's sha256)."""

    exit_code = 4
