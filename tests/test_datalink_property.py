"""Property tests of the DataLink parser (issue 11 item 9, the DataLink half), with hypothesis.

Random DataLink VOTable documents, as the archive could answer them and worse: rows of
files, error rows, service rows, names with odd characters, sizes that are negative,
huge, empty or not numbers, `readable` flags, URL schemes other than http(s), cells
missing, columns missing, and the bytes of the document cut or garbled. The invariant:
`parse_votable` returns a valid listing (every file an http(s) URL with a safe, unique
name and a size >= 0) or raises our own one-line error (DataLinkError, its
LoginNeededError, or UnsafeUrlError); never another exception. For documents built
only from good rows the listing is exactly those rows, the error rows left out and
reported.

Settings: `EXAMPLES` examples per property (3 properties), no deadline (a 2-core
machine shared by many); together they run in a few seconds.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alma_regen.staging.datalink import COLUMNS, RemoteFile, check_name, parse_votable, votable
from alma_regen.staging.errors import DataLinkError, UnsafeUrlError

EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Archive file names, built from parts (from_regex is slow to draw from).
GOOD_NAME = st.builds(
    lambda year, n, x1, x2, tail: f"20{year:02d}.1.{n:05d}.S_uid___A001_X{x1:x}_X{x2:x}{tail}",
    st.integers(11, 30), st.integers(0, 99999), st.integers(1, 0xfffff), st.integers(1, 0xffff),
    st.sampled_from([".asdm.sdm.tar", "_auxiliary.tar", "_001_of_003.tar", "_002_of_003.tar"]))
ODD_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
NAME = st.one_of(GOOD_NAME, ODD_TEXT, st.sampled_from(["..", ".", ".hidden", "a/b", "a%2Fb", "%2E%2E", "x" * 300,
                                                       "README.txt\x00", "name\nwith newline"]))
SCHEME = st.sampled_from(["http", "https", "HTTP", "file", "ftp", "s3", "javascript", "", "data"])
HOST = st.sampled_from(["127.0.0.1:8080", "almascience.example.org", "", "[::1]:99", "host:notaport",
                        "h:99999999"])
SIZE = st.one_of(st.integers(-10, 10 ** 12).map(str), st.sampled_from(["", "-0", "1e6", " 12 ", "٣", "1_000",
                                                                       "9" * 30, "9" * 5000, "0x10", "NaN"]))
READABLE = st.sampled_from(["", "true", "false", "T", "F", "1", "0", "maybe", "FALSE"])
SEMANTICS = st.sampled_from(["#progenitor", "#auxiliary", "#this", "#documentation", "", "#other"])


@st.composite
def any_row(draw) -> dict:
    kind = draw(st.sampled_from(["file", "file", "file", "error", "service"]))
    row = {"ID": draw(st.one_of(st.just("uid://A001/X1/X2"), ODD_TEXT))}
    if kind == "error":
        row["error_message"] = draw(st.one_of(st.just("NotFoundFault: gone"), ODD_TEXT))
        return row
    if kind == "service":
        row["service_def"] = "ds1"
        return row
    row["access_url"] = f"{draw(SCHEME)}://{draw(HOST)}/dataPortal/{draw(NAME)}"
    row["content_length"] = draw(SIZE)
    row["readable"] = draw(READABLE)
    row["semantics"] = draw(SEMANTICS)
    return row


def document(fields, rows, cells_of=None) -> bytes:
    """A VOTable with these FIELD names and rows (cells_of(row) may add or drop cells)."""
    head = "".join(f'<FIELD name="{escape(f)}" datatype="char" arraysize="*"/>' for f in fields)
    trs = []
    for r in rows:
        cells = [str(r.get(f, "")) for f in fields]
        if cells_of:
            cells = cells_of(cells)
        trs.append("<TR>" + "".join(f"<TD>{escape(c)}</TD>" for c in cells) + "</TR>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
            f'version="1.3"><RESOURCE type="results"><TABLE>{head}<DATA><TABLEDATA>{"".join(trs)}'
            f"</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>").encode("utf-8", "surrogatepass")


def check(data: bytes):
    """The invariant: a valid listing, or our own one-line error. Returns the listing or None."""
    try:
        listing = parse_votable(data, "prop")
    except (DataLinkError, UnsafeUrlError) as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))
        return None
    names = [f.name for f in listing]
    assert len(set(names)) == len(names)
    for f in listing:
        assert isinstance(f, RemoteFile) and isinstance(f.size, int) and f.size >= 0
        assert f.url.lower().startswith(("http://", "https://"))
        check_name(f.name, "prop")  # raises if the parser let an unsafe name through
    assert all(isinstance(i, str) and isinstance(m, str) for i, m in listing.errors)
    return listing


@SETTINGS
@given(fields=st.lists(st.sampled_from(COLUMNS + ("readable", "extra", "")), max_size=12),
       rows=st.lists(any_row(), max_size=8),
       shape=st.sampled_from(["as is", "drop a cell", "add a cell"]))
def test_any_document_gives_a_listing_or_our_error(fields, rows, shape):
    cells_of = {"as is": None, "drop a cell": lambda c: c[:-1], "add a cell": lambda c: c + ["x"]}[shape]
    check(document(fields, rows, cells_of))


@SETTINGS
@given(rows=st.lists(any_row(), min_size=1, max_size=6), cut=st.integers(0, 4000),
       garbage=st.binary(max_size=20), how=st.sampled_from(["cut", "insert", "replace"]))
def test_garbled_bytes_give_a_listing_or_our_error(rows, cut, garbage, how):
    data = document(COLUMNS, rows)
    cut = min(cut, len(data))
    data = {"cut": data[:cut], "insert": data[:cut] + garbage + data[cut:],
            "replace": data[:cut] + garbage + data[cut + len(garbage):]}[how]
    check(data)


@SETTINGS
@given(names=st.lists(GOOD_NAME, min_size=1, max_size=6, unique=True),
       sizes=st.lists(st.integers(0, 10 ** 13), min_size=6, max_size=6),
       errors=st.lists(st.sampled_from(["NotFoundFault: gone", "ReadFault: tape offline"]), max_size=3),
       https=st.booleans())
def test_good_documents_give_exactly_their_rows(names, sizes, errors, https):
    base = "https://almascience.example.org" if https else "http://127.0.0.1:8080"
    rows = [{"ID": "uid://A001/X1/X2", "access_url": f"{base}/dataPortal/{n}", "content_length": s,
             "semantics": "#progenitor", "readable": "true"} for n, s in zip(names, sizes)]
    rows += [{"ID": f"uid://A001/X1/X{i}", "error_message": m} for i, m in enumerate(errors)]
    listing = check(votable("uid://A001/X1/X2", rows))
    # Expected decision: every good row listed as it was, the error rows dropped and reported.
    assert [(f.name, f.size, f.url) for f in listing] == [(n, s, f"{base}/dataPortal/{n}")
                                                          for n, s in zip(names, sizes)]
    assert [m for _, m in listing.errors] == errors
