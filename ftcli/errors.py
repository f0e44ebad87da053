"""Errors a user can act on. cli.py turns them into a message and an exit code."""


class FtcliError(Exception):
    """Base class: `exit_code` follows DESIGN.md (1 = the job ran and failed, 2 = bad input)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(FtcliError):
    """The recipe, the data, the arguments or the environment are wrong: exit 2."""

    exit_code = 2


class RecipeError(BadInput):
    """An invalid recipe: one message per problem, each naming file, line and key path."""

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = problems
        super().__init__("\n".join(problems), hint)


class DataError(BadInput):
    """A dataset that cannot be read or has a malformed row."""


class MissingPackage(BadInput):
    """An optional package the recipe needs is not installed."""

    def __init__(self, package: str, needed_for: str, install: str):
        super().__init__(
            f"{needed_for} needs the package '{package}', which is not installed.",
            hint=f"install it with: {install}",
        )


class TrainingFailed(FtcliError):
    """Training ran and failed (NaN loss, out of memory, ...): exit 1."""
