"""Credentials out of text that leaves the worker (CASA logs published to S3).

A second line of defence: CASA children get no secret in their environment
(casa/env.py) and run sandboxed (casa/sandbox.py), but a log is published
as it was written, so anything in it that looks like a credential is
replaced by `[REDACTED]` before it goes up: AWS access key ids, values after
aws_secret_access_key= / password= / token= / secret=, Authorization and Cookie
headers, the user:password@ of URLs, and the exact values of the worker's
secret variables (AIRFLOW_CONN_*, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
the request handler's cookie...) wherever they appear.
"""
import os
import re

MASK = "[REDACTED]"
_MASK_B = MASK.encode()

# Variables whose values are secrets wherever they appear (by name or prefix).
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "ALMA_REQUEST_HANDLER_COOKIE",
               "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
               "AIRFLOW__CELERY__RESULT_BACKEND")
SECRET_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_")
# Values this short are not worth masking everywhere (they would mask ordinary words).
_MIN_SECRET_LEN = 6

_PATTERNS = [
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (re.compile(rb"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), lambda m: _MASK_B),
    # key=value or key: value for credential-like keys (quoted or not), in config files, shells, URLs, JSON.
    (re.compile(rb"(?i)((?:aws_secret_access_key|aws_session_token|secret_access_key|secret[_-]?key|password|passwd"
                rb"|token|api[_-]?key|secret|cookie)[\"']?\s*[=:]\s*[\"']?)([^\s\"'&,;}]+)"),
     lambda m: m.group(1) + _MASK_B),
    # HTTP headers.
    (re.compile(rb"(?im)^(\s*(?:authorization|proxy-authorization|cookie|set-cookie|x-amz-security-token)\s*:\s*)(.+)$"),
     lambda m: m.group(1) + _MASK_B),
    (re.compile(rb"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), lambda m: m.group(1) + b" " + _MASK_B),
    # scheme://user:password@host
    (re.compile(rb"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@]+):([^\s/@]+)@"), lambda m: m.group(1) + m.group(2) + b":"
     + _MASK_B + b"@"),
]


def secret_values(environ=None) -> list:
    """The values of the worker's secret variables (and of the parts of an AIRFLOW_CONN_ URI)."""
    environ = os.environ if environ is None else environ
    values = set()
    for k, v in environ.items():
        if not v or not (k in SECRET_VARS or k.startswith(SECRET_PREFIXES)):
            continue
        values.add(v)
        # An AIRFLOW_CONN_ URI's password also appears alone (percent-decoded) in what a client logs.
        m = re.match(r"[^:]+://[^:/@]*:([^@/]+)@", v)
        if m:
            from urllib.parse import unquote
            values.update({m.group(1), unquote(m.group(1))})
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def scrub_bytes(data: bytes, environ=None) -> bytes:
    """`data` with every credential-looking part replaced by [REDACTED]."""
    for v in secret_values(environ):
        data = data.replace(v.encode(), _MASK_B)
    for pattern, repl in _PATTERNS:
        data = pattern.sub(repl, data)
    return data


def scrub(text: str, environ=None) -> str:
    return scrub_bytes(text.encode("utf-8", "surrogateescape"), environ).decode("utf-8", "surrogateescape")
