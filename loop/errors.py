"""The project's own exceptions, and the exit code each one ends a process with.

Every exception the project raises is defined here, and each class says in its own body:

    fatal      a stage that raised it fails at once instead of being retried (a retry would fail the
               same way, e.g. a NaN loss or a damaged adapter)
    exit_code  the `sealong-loop` command's exit code when the error ends it

`exit_code_for(exc)` is the one place that turns an exception into an exit code: the command's
(loop/cli.py main) or, with stage=True, a stage process's (loop/engine/stage_main.py), which the
controller reads to decide whether to retry. README's "Exit codes" table lists the command's codes; a
test checks that the two agree.
"""

from __future__ import annotations

import signal

# `sealong-loop`: one meaning per code.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # doctor: this machine cannot run the config; verify: the workdir has problems
EXIT_BAD_INPUT = 2  # a usage mistake, a bad config or data file, a busy workdir, a machine too small
EXIT_FAILED = 3  # start: the run failed (resumable); worker --once: the training stage failed on this node
EXIT_INTEGRITY = 4  # damaged data: an adapter unlike its recorded sha256, a sealong.db that is not one
EXIT_STOPPED = 5  # start: stopped before finishing (stop, stop --now, SIGTERM); resumable
EXIT_CANNOT_JOIN = (
    6  # worker: could not join (torchrun failed 3 times, once with --once; or refused: run token)
)
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: worker stopped by SIGTERM (start exits EXIT_STOPPED)

# A stage process (read by the controller only). 1 is also what Python exits with on an uncaught error.
STAGE_EXIT_RETRYABLE = 1  # the controller tries the stage again, up to run.max_stage_retries
STAGE_EXIT_FATAL = 10  # the run fails at once: the same inputs would fail again


def exit_on_sigterm(signum, frame) -> None:
    """A SIGTERM handler that unwinds like an exception, so `finally` blocks run before the exit."""
    raise SystemExit(128 + signum)


class SealongError(Exception):
    """Base class: an error a user can act on. Its message is printed as is, without a traceback."""

    fatal = False
    exit_code = EXIT_BAD_INPUT


class ConfigError(SealongError):
    """One or more problems in a TOML config, all listed in one message."""

    fatal = False  # read before any stage runs
    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem(s) in the config:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(SealongError):
    """A bad record in a data file: names the file, the line and the field."""

    fatal = False  # read before the run starts
    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = path, line, field
        where = path if line is None else f"{path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class WorkdirBusy(SealongError):
    """Another controller holds the workdir's lock."""

    fatal = False
    exit_code = EXIT_BAD_INPUT


class QueryError(SealongError):
    """A `query` statement SQLite refused or could not run."""

    fatal = False
    exit_code = EXIT_BAD_INPUT


class SetupError(SealongError):
    """This machine cannot run the config as it stands (e.g. fewer GPUs than it asks for): a retry would
    fail the same way, so the stage fails at once."""

    fatal = True
    exit_code = EXIT_BAD_INPUT


class IntegrityError(SealongError):
    """An artifact does not match what the store recorded (e.g. an adapter's sha256)."""

    fatal = True
    exit_code = EXIT_INTEGRITY


class NonFiniteLoss(SealongError):
    """Training produced a NaN or inf loss; the adapter is discarded."""

    fatal = True
    exit_code = EXIT_FAILED


class StageFailed(SealongError):
    """A stage failed more often than the retry bound allows, or once with a fatal error."""

    fatal = True  # the controller already retried it as often as allowed
    exit_code = EXIT_FAILED


class DiskFull(SealongError):
    """The store or an artifact could not be written for lack of space; nothing done was lost.

    Exits EXIT_FAILED like a stage that failed for a full disk: which of the two a full disk hits first
    is a race, and both are resumed the same way (free space, then `start`)."""

    fatal = True  # until someone frees space
    exit_code = EXIT_FAILED


class ReplicaFailed(SealongError):
    """A replica of a data-parallel stage failed with a retryable error; the others were stopped."""

    fatal = False
    exit_code = EXIT_FAILED


class FatalReplicaFailure(ReplicaFailed):
    """A replica of a data-parallel stage failed with a fatal error (it would fail again as is)."""

    fatal = True
    exit_code = EXIT_FAILED


class NodeLost(SealongError):
    """A multi-node sample/eval stage lost a node (no heartbeat, or its engines failed), or a node never
    joined: the stage fails naming it; what the other nodes finished is kept, and a retry redoes the rest."""

    fatal = False
    exit_code = EXIT_FAILED


class JoinRefused(SealongError):
    """A worker's run token is not the launch's (another run, or an earlier launch of this one)."""

    fatal = True
    exit_code = EXIT_CANNOT_JOIN


class RankDisagreement(RuntimeError):
    """A rank of a torch.distributed job found its inputs differ from rank 0's; raised on every rank at
    once, so none hangs. Not a SealongError: its class name is part of the stage's recorded error."""

    fatal = False
    exit_code = EXIT_FAILED


PROJECT_ERRORS = (SealongError, RankDisagreement)


def is_fatal(exc: BaseException) -> bool:
    """Would a retry fail the same way? A full disk counts, whichever error reported it."""
    from sealong.store.artifacts import is_disk_full

    return (isinstance(exc, PROJECT_ERRORS) and type(exc).fatal) or is_disk_full(exc)


def exit_code_for(exc: BaseException, *, stage: bool = False) -> int:
    """The exit code of a process that `exc` ended: the `sealong-loop` command's, or with stage=True a
    stage process's (STAGE_EXIT_FATAL or STAGE_EXIT_RETRYABLE)."""
    if stage:
        return STAGE_EXIT_FATAL if is_fatal(exc) else STAGE_EXIT_RETRYABLE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PROJECT_ERRORS):
        return type(exc).exit_code
    return 1  # what Python exits with on an uncaught exception (with its traceback)
