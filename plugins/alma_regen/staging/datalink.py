"""The DataLink VOTable of the ALMA request handler: read it (staging) and write it (serve-archive).

`<root>/datalink/sync?ID=<MOUS uid>` answers one VOTable row per file with
`access_url`, `content_length` (bytes: the only size truth; no checksums are
published), `content_type` and `semantics` (`#progenitor` raw ASDM tars,
`#auxiliary`, `#this` product tars, `#documentation` README), and `readable`
(false: proprietary, a login is needed). A row with `error_message` is the archive
saying it cannot give that one file; the rest of the answer stands.

As the archive answers (astroquery keeps captured answers as test data, e.g.
astroquery/alma/tests/data/alma-datalink.xml): ASDM tars are listed directly at MOUS
level beside the product and auxiliary tars; each tar also has a row with an empty
access_url and a `service_def` naming a nested DataLink descriptor (a `RESOURCE
type="meta"` after the results) that lists the tar's contents, and services use
`#datalink` rows with content_type `application/x-votable+xml;content=datalink`: none of
these is a download, all are skipped. The answer may hold several RESOURCEs; only the
`results` table is read. An `error_message` row is dropped with a warning (astroquery
does the same): whether it matters is decided where a needed file turns out missing
(staging.stage: the auxiliary tar, a PPR's EB), which then quotes what the archive said.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from .. import safexml
from ..errors import DeliveryError
from .errors import DataLinkError, LoginNeededError, UnsafeUrlError

log = logging.getLogger("alma_regen.staging")

COLUMNS = ("ID", "access_url", "service_def", "error_message", "semantics",
           "description", "content_type", "content_length", "readable")


@dataclass(frozen=True)
class RemoteFile:
    """One archive file as a source lists it."""
    name: str
    size: int
    url: str  # http(s) access_url or s3://bucket/key
    semantics: str = ""
    content_type: str = ""
    etag: str = ""  # known from an S3 listing; HTTP learns it from the response


class Listing(list):
    """The RemoteFiles of a DataLink answer, plus the rows the archive answered with an error.

    `errors` holds (ID, error_message) of the dropped rows, so a later "file missing"
    can say what the archive said about it.
    """

    def __init__(self, files=(), errors=()):
        super().__init__(files)
        self.errors = list(errors)


# The archive's boolean spellings (VOTable booleans: true/false, T/F, 1/0; empty means not said).
_TRUE = {"true", "t", "1", "yes", ""}
_FALSE = {"false", "f", "0", "no"}
URL_SCHEMES = ("http", "https")  # what an HTTP source can fetch; anything else (file://...) is refused
_MAX_DIGITS = 18  # content_length fits an int64; longer is malformed, not a size
_NAME_MAX = 255
# A row that points at another DataLink document (nested descriptors, `#datalink` services).
DATALINK_CONTENT_TYPE = "application/x-votable+xml;content=datalink"


def _one_line(text: str, limit: int = 300) -> str:
    """A value quoted from the document, fit for a one-line message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _name_of(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def check_url(url: str, what: str) -> None:
    """Refuse a URL staging must not fetch: another scheme than http(s), no host, control characters."""
    try:
        u = urlsplit(url)
        ok = u.scheme.lower() in URL_SCHEMES and bool(u.hostname)
        u.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        ok = False
    if not ok or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UnsafeUrlError(f"{what}: refused URL {url[:200]!r} (only http:// and https:// with a host are fetched)")


def check_name(name: str, where: str) -> None:
    if (not name or name in (".", "..") or name.startswith(".") or len(name.encode("utf-8", "replace")) > _NAME_MAX
            or any(c in name for c in "/\\\0") or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise DataLinkError(where, f"unusable file name in the DataLink answer: {name[:100]!r}")


def parse_votable(data: bytes, where: str) -> Listing:
    """The archive's DataLink answer as a Listing; DataLinkError (one line) for anything unusable.

    A row with `error_message` is dropped with a warning (the archive means that row only);
    `readable=false` means proprietary data: LoginNeededError before any download.
    """
    try:
        root = safexml.parse_bytes(data, where)
    except DeliveryError as exc:
        raise DataLinkError(where, _one_line(exc.detail)) from None
    except (ValueError, TypeError, etree.LxmlError) as exc:  # lxml: bad encodings, NUL bytes
        raise DataLinkError(where, f"not a DataLink VOTable: {type(exc).__name__}: {_one_line(str(exc))}") from None
    table = _results_table(root, where)
    fields = [f.get("name") or f.get("ID") or "" for f in safexml.find_all(table, "FIELD")]
    if "access_url" not in fields or "content_length" not in fields:
        raise DataLinkError(where, "DataLink VOTable lacks access_url/content_length columns")
    if len(set(fields)) != len(fields):
        raise DataLinkError(where, "DataLink VOTable names a column twice")
    files, errors, locked, seen = [], [], [], {}
    for n, tr in enumerate(safexml.find_all(table, "TR"), 1):
        cells = [(td.text or "").strip() for td in safexml.children(tr, "TD")]
        if len(cells) != len(fields):
            raise DataLinkError(where, f"row {n} has {len(cells)} cells for {len(fields)} columns")
        row = dict(zip(fields, cells))
        ident = row.get("ID", "") or f"row {n}"
        url = row.get("access_url", "")
        if row.get("error_message"):
            # Named by its file when the row has an access_url (what astroquery logs), else its ID.
            named = _name_of(url) if url else ""
            errors.append((_one_line(named or ident, 100), _one_line(row["error_message"])))
            continue
        if not url or row.get("service_def") or _is_datalink(row):
            continue  # nested DataLink descriptors and services: not a file to download
        check_url(url, f"{where}: row {n}")
        name = _name_of(url)
        check_name(name, where)
        length = row.get("content_length", "")
        if not length:
            raise DataLinkError(where, f"{name}: no content_length (the size is the only check of a download)")
        if not re.fullmatch(r"-?[0-9]+", length) or len(length.lstrip("-")) > _MAX_DIGITS:
            raise DataLinkError(where, f"{name}: content_length {length[:30]!r} is not a number of bytes")
        size = int(length)
        if size < 0:
            raise DataLinkError(where, f"{name}: negative content_length {size}")
        readable = row.get("readable", "").lower()
        if readable not in _TRUE | _FALSE:
            raise DataLinkError(where, f"{name}: readable {readable[:30]!r} is not a boolean")
        if readable in _FALSE:
            locked.append(name)
        if name in seen:
            raise DataLinkError(where, f"{name}: listed twice (rows {seen[name]} and {n})")
        seen[name] = n
        files.append(RemoteFile(name=name, size=size, url=url, semantics=row.get("semantics", ""),
                                content_type=row.get("content_type", "")))
    if locked:
        raise LoginNeededError(where, f"login needed: the archive marks {len(locked)} file(s) readable=false "
                                      f"(proprietary data), e.g. {locked[0]}; give the request handler's "
                                      "credentials or login cookie")
    # Even an answer of error rows only is not refused here: the missing files are (classify,
    # ebs_to_stage), each with what the archive said about it.
    for ident, msg in errors:
        log.warning("%s: the archive cannot provide %s (%s); that row is left out", where, ident, msg)
    return Listing(files, errors)


def _is_datalink(row: dict) -> bool:
    """A `#datalink` row or one whose content is another DataLink document (not a file)."""
    ctype = "".join(row.get("content_type", "").lower().split())
    return row.get("semantics", "") == "#datalink" or ctype.startswith(DATALINK_CONTENT_TYPE)


def _results_table(root, where: str):
    """The TABLE of the `results` RESOURCE (DataLink 1.0: exactly one); the document's only TABLE
    when no RESOURCE says `results`."""
    results = [r for r in safexml.find_all(root, "RESOURCE") if r.get("type") == "results"]
    tables = [t for r in results for t in safexml.find_all(r, "TABLE")] or safexml.find_all(root, "TABLE")
    if len(tables) != 1:
        raise DataLinkError(where, f"expected one results TABLE in the DataLink answer, found {len(tables)}")
    return tables[0]


def votable(mous: str, rows: list[dict]) -> bytes:
    """A DataLink VOTable; rows hold the COLUMNS' values."""
    def field(c):
        if c == "content_length":
            return f'<FIELD name="{c}" datatype="long" unit="byte"/>'
        return f'<FIELD name="{c}" datatype="char" arraysize="*"/>'

    fields = "".join(field(c) for c in COLUMNS)
    trs = "".join("<TR>" + "".join(f"<TD>{escape(str(r.get(c, '')))}</TD>" for c in COLUMNS) + "</TR>"
                  for r in rows)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">'
            f'<RESOURCE type="results"><INFO name="standardID" value="ivo://ivoa.net/std/DataLink#links-1.0"/>'
            f'<INFO name="ID" value="{escape(mous)}"/>'
            f"<TABLE>{fields}<DATA><TABLEDATA>{trs}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n").encode()
