"""One-line errors for things a user can fix (bad flags, bad data, bad checkpoints)."""
import sys


class UserError(Exception):
    """An error caused by input the user controls.

    Scripts print it as one line ``error: <message>`` and exit with code 2, with no
    traceback. The message says what is wrong and what to do.
    """


class InputShapeError(UserError, ValueError):
    """An input tensor the model cannot take (wrong channel count, too small); a ValueError for library users."""


def run_main(main, argv=None):
    """Call ``main(argv)``; turn a UserError into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
