"""Staging's own error classes, all under the two families of alma_regen.errors.

The DAG's retry policy only looks at TransientError vs PermanentError; the
subclasses exist so tests and logs can tell the causes apart.
"""
from ..errors import DeliveryError, PermanentError, TransientError


class HostileTarError(PermanentError):
    """A tar member tries to escape, is a device/FIFO/setuid file, or is outside the expected prefix."""


class BadArchiveError(PermanentError):
    """The stream is not a complete tar (cut at a member boundary, no end-of-archive blocks, bad header)."""


class NotFoundError(PermanentError):
    """The source does not hold the file (404, missing key, not in the listing)."""


class AccessDeniedError(PermanentError):
    """401/403: the login cookie or credentials are missing or wrong."""


class SourceChangedError(TransientError):
    """The remote file changed under us in a way a fresh listing must resolve."""


class LockBusyError(TransientError):
    """Another process is staging the same file."""


class DataLinkError(DeliveryError):
    """The archive's DataLink answer cannot be used (malformed, bad sizes, duplicate or unsafe rows)."""


class LoginNeededError(DataLinkError, AccessDeniedError):
    """The DataLink answer marks files `readable=false`: proprietary data, a login is needed."""


class UnsafeUrlError(PermanentError):
    """A listing or a redirect names a URL staging must not follow (file://, ftp://, no host...)."""


class Interrupted(TransientError):
    """Staging was asked to stop (Ctrl-C, task kill); the partial state is kept for a resume."""


class TooSlowError(TransientError):
    """The source sent less than the floor rate for the whole window: give up, resume later."""
