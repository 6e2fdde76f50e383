"""The one exception type that user-facing failures travel as.

Tasks turn it into a single line and a non-zero exit; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do, in one line.

    `details` (for example the last lines of a failing service's log) is shown after that line.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
