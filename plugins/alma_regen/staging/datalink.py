"""The DataLink VOTable of the ALMA request handler: read it (staging) and write it (serve-archive).

`<root>/datalink/sync?ID=<MOUS uid>` answers one VOTable row per file with
`access_url`, `content_length` (bytes: the only size truth; no checksums are
published), `content_type` and `semantics` (`#progenitor` raw ASDM tars,
`#auxiliary`, `#this` product tars, `#documentation` README).
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from .. import safexml
from ..errors import DeliveryError

COLUMNS = ("ID", "access_url", "service_def", "error_message", "semantics",
           "description", "content_type", "content_length")


@dataclass(frozen=True)
class RemoteFile:
    """One archive file as a source lists it."""
    name: str
    size: int
    url: str  # http(s) access_url or s3://bucket/key
    semantics: str = ""
    content_type: str = ""
    etag: str = ""  # known from an S3 listing; HTTP learns it from the response


def parse_votable(data: bytes, where: str) -> list[RemoteFile]:
    root = safexml.parse_bytes(data, where)
    fields = [f.get("name") for f in safexml.find_all(root, "FIELD")]
    if "access_url" not in fields or "content_length" not in fields:
        raise DeliveryError(where, "DataLink VOTable lacks access_url/content_length columns")
    out = []
    for tr in safexml.find_all(root, "TR"):
        cells = [(td.text or "").strip() for td in safexml.children(tr, "TD")]
        row = dict(zip(fields, cells))
        if row.get("error_message"):
            raise DeliveryError(where, f"DataLink error for {row.get('ID', '?')}: {row['error_message']}")
        url = row.get("access_url", "")
        if not url:
            continue  # service descriptors (nested DataLink) carry no access_url
        try:
            size = int(row.get("content_length") or "")
        except ValueError:
            raise DeliveryError(where, f"{url}: content_length is not a number") from None
        out.append(RemoteFile(name=url.rstrip("/").rsplit("/", 1)[-1], size=size, url=url,
                              semantics=row.get("semantics", ""), content_type=row.get("content_type", "")))
    return out


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
