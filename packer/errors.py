"""packer's exception type: bad input, bad options, or a packed folder that is not what it claims.

The CLI turns it into a one-line message and exit code 2; anything else escaping is a bug in packer.
:class:`ConfigError` is the :class:`PackerError` of a bad parameter value, so that the CLI can name the flag.
"""


class PackerError(ValueError):
    """Raised for input or options packer cannot use; the message names the file, column or row and the fix."""


class ConfigError(PackerError):
    """A bad value for a parameter of :class:`Columns`, :class:`packer.convert.PackConfig` or ``pack_dataset``.

    The message names the Python parameter (``PackConfig(capacity=0): ...``); the CLI prints the flag instead
    (``--max-length 0: ...``) with :meth:`message_for`.

    Attributes:
        owner: the class or function (``"PackConfig"``).
        param: the parameter.
        value: what was given.
        rule: what it must be.
    """

    def __init__(self, owner: str, param: str, value, rule: str):
        self.owner, self.param, self.value, self.rule = owner, param, value, rule
        super().__init__(self.message_for(f"{owner}({param}={value!r})"))

    def message_for(self, where: str) -> str:
        return f"{where}: {self.rule}"
