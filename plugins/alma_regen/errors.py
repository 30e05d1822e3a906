"""The error classes every step raises.

Two families, because the DAGs' retry policy needs to tell them apart:
`TransientError` is worth retrying (network, 5xx, throttling, a killed CASA
child); `PermanentError` is not (bad input, checksum mismatch after a clean
re-download, a hostile tar, a missing CASA version, no space). Both carry one
clear line that the CLI prints without a traceback.
"""


class AlmaRegenError(Exception):
    """Base class: the message is meant for an operator, one line."""


class PermanentError(AlmaRegenError):
    """Retrying will not help: the input or the installation must change."""


class TransientError(AlmaRegenError):
    """A fault that a retry may clear."""


class DeliveryError(PermanentError):
    """The delivery (scripts, README, PPR, ASDMs) is not what it must be."""

    def __init__(self, path, message):
        self.path = str(path)
        self.detail = message
        super().__init__(f"{path}: {message}")


class CasaError(PermanentError):
    """CASA failed or is not installed in the version needed."""


class CasaKilled(TransientError):
    """The CASA child was killed from outside (OOM killer, worker shutdown)."""


class CasaTimeout(PermanentError):
    """The CASA child ran past its time limit and was killed with its group."""


class NoSpaceError(PermanentError):
    """Not enough free disk for the step."""
