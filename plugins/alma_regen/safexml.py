"""One hardened lxml parser for every XML file that comes from outside.

PPRs, ASDM tables, pipeline manifests and VOTables are hostile until checked:
no entity expansion (billion laughs), no DTD or network fetches, no huge
trees. Every parse error becomes a `DeliveryError` naming the file.
"""
from pathlib import Path

from lxml import etree

from .errors import DeliveryError

_PARSER_ARGS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
)


def _parser():
    # A parser is not thread-safe: one per call is cheap.
    return etree.XMLParser(**_PARSER_ARGS)


def _check(tree, where):
    doc = tree.getroottree().docinfo if hasattr(tree, "getroottree") else tree.docinfo
    if doc.internalDTD is not None and doc.internalDTD.entities():
        raise DeliveryError(where, "XML declares entities (refused: possible entity-expansion bomb)")


def parse_file(path) -> "etree._Element":
    """Parse an XML file safely; return the root element."""
    path = Path(path)
    try:
        tree = etree.parse(str(path), _parser())
    except OSError as exc:
        raise DeliveryError(path, f"cannot read: {exc}") from None
    except etree.XMLSyntaxError as exc:
        raise DeliveryError(path, f"not well-formed XML: {exc}") from None
    _check(tree, path)
    return tree.getroot()


def parse_bytes(data: bytes, where: str) -> "etree._Element":
    """Parse XML bytes (e.g. an HTTP body) safely; `where` names the source."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise DeliveryError(where, f"not well-formed XML: {exc}") from None
    _check(root, where)
    return root


def local(tag) -> str:
    """The tag without its namespace."""
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def children(el, name):
    """Direct children with this local name, whatever their namespace."""
    return [c for c in el if local(c.tag) == name]


def find_all(el, name):
    """Descendants with this local name, whatever their namespace."""
    return [c for c in el.iter() if local(c.tag) == name]


def text_of(el, name, default=None):
    for c in el.iter():
        if local(c.tag) == name:
            return (c.text or "").strip()
    return default
