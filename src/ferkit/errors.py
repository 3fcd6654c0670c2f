"""The one exception type users see: its message is a single line naming the problem and the fix."""


class FerkitError(Exception):
    pass
