"""packer's one exception type: bad input, bad options, or a packed folder that is not what it claims.

The CLI turns it into a one-line message and exit code 2; anything else escaping is a bug in packer.
"""


class PackerError(ValueError):
    """Raised for input or options packer cannot use; the message names the file, column or row and the fix."""
