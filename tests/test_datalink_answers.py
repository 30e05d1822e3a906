"""The archive's DataLink answers as it gives them (issue 10 item 6), parsed and sorted.

The answers here are written in the shape of the archive's real ones, as astroquery keeps
them captured (astroquery/alma/tests/data/alma-datalink.xml, alma-datalink-recurse-aux.xml):
a `results` RESOURCE whose TABLE has the nine DataLink columns (the boolean `readable` FIELD
carrying a DESCRIPTION), empty cells written `<TD />`, the ASDM tars listed directly at MOUS
level, a row per tar with an empty access_url and a `service_def` naming a nested descriptor,
and `RESOURCE type="meta"` blocks (PARAMs, no table) after the results. Values are our own.
The expected decision is stated per case.
"""
from __future__ import annotations

import logging

import pytest

from alma_regen import naming
from alma_regen.staging.datalink import parse_votable
from alma_regen.staging.errors import DataLinkError, LoginNeededError, NotFoundError
from alma_regen.staging.stage import classify

PROJECT = "2016.1.00321.S"
MOUS = "uid://A001/X87a/X21"
EBS = ("uid://A002/Xc1d2e3/X1a0", "uid://A002/Xc1d2e3/X2b7")
BASE = "https://almascience.example.org/dataPortal/"
COLUMNS = ("ID", "access_url", "service_def", "error_message", "semantics", "description", "content_type",
           "content_length", "readable")


def _td(value) -> str:
    return "<TD />" if value in (None, "") else f"<TD>{value}</TD>"


def answer(rows: list[dict], meta: tuple = ()) -> bytes:
    """A DataLink document in the archive's shape: results table, then nested descriptors' RESOURCEs."""
    fields = "\n".join(
        '      <FIELD name="content_length" datatype="long" ucd="phys.size;meta.file" unit="byte" />'
        if c == "content_length" else
        '      <FIELD name="readable" datatype="boolean">\n'
        '        <DESCRIPTION>may the caller use this link with the identity it has</DESCRIPTION>\n'
        '      </FIELD>' if c == "readable" else
        f'      <FIELD name="{c}" datatype="char" arraysize="*" />' for c in COLUMNS)
    trs = "\n".join("          <TR>" + "".join(_td(r.get(c)) for c in COLUMNS) + "</TR>" for r in rows)
    metas = "\n".join(
        f'  <RESOURCE type="meta" ID="{d}" utype="adhoc:service">\n'
        '    <PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/DataLink#links-1.0" />\n'
        f'    <PARAM name="accessURL" datatype="char" arraysize="*" '
        f'value="https://almascience.example.org/datalink/sync?ID={d[len("DataLink."):]}" />\n'
        '    <GROUP name="inputParams" />\n  </RESOURCE>' for d in meta)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.4">\n'
            f'  <RESOURCE type="results">\n    <TABLE>\n{fields}\n      <DATA>\n        <TABLEDATA>\n{trs}\n'
            f'        </TABLEDATA>\n      </DATA>\n    </TABLE>\n    <INFO name="placeholder" value="ignore" />\n'
            f'  </RESOURCE>\n{metas}\n</VOTABLE>\n').encode()


def file_row(name, semantics, size, readable="true", ctype="application/x-tar", **kw):
    return dict({"ID": MOUS, "access_url": BASE + name, "semantics": semantics, "content_type": ctype,
                 "description": "Download dataset", "content_length": size, "readable": readable}, **kw)


def descriptor_row(name, semantics):
    """The row the archive adds per tar: no access_url, a service_def to a nested descriptor."""
    return {"ID": MOUS, "service_def": f"DataLink.{name}", "semantics": semantics,
            "content_type": "application/x-votable+xml;content=datalink"}


def mous_rows(ebs=EBS, aux=True):
    m = naming.uid_to_file(MOUS)
    product, auxiliary = f"{PROJECT}_{m}_001_of_001.tar", f"{PROJECT}_{m}_auxiliary.tar"
    rows = [file_row(naming.readme_name(MOUS), "#documentation", 3172, ctype="text/plain"),
            file_row(product, "#this", 412_334_080), descriptor_row(product, "#this")]
    if aux:
        rows += [file_row(auxiliary, "#auxiliary", 98_304_000), descriptor_row(auxiliary, "#auxiliary")]
    rows += [file_row(naming.asdm_tar(PROJECT, eb), "#progenitor", 2_100_000_000 + i) for i, eb in enumerate(ebs)]
    meta = (f"DataLink.{product}",) + ((f"DataLink.{auxiliary}",) if aux else ())
    return rows, meta


def test_a_real_shaped_answer_lists_the_mous_files_and_skips_the_descriptors():
    # Decision: README, product and auxiliary tars and both ASDMs (listed at MOUS level) are files;
    # the two service_def rows and the meta RESOURCEs are not.
    rows, meta = mous_rows()
    files = parse_votable(answer(rows, meta), "DataLink")
    assert len(files) == 5 and not files.errors
    listing = classify(files, MOUS)
    assert listing.project == PROJECT and listing.auxiliary is not None and len(listing.products) == 1
    assert sorted(listing.asdms) == sorted(EBS)
    assert listing.asdms[EBS[1]].size == 2_100_000_001


def test_a_datalink_service_row_with_an_access_url_is_not_a_download():
    # Decision: a `#datalink` row (access_url to another DataLink document, no content_length) is
    # skipped, not refused for its missing size (astroquery expands or drops such rows).
    rows, meta = mous_rows()
    rows.append({"ID": MOUS, "access_url": "https://almascience.example.org/datalink/sync?ID=x_auxiliary.tar",
                 "semantics": "#datalink", "content_type": "application/x-votable+xml;content=datalink"})
    assert len(parse_votable(answer(rows, meta), "DataLink")) == 5


def test_an_error_row_with_an_access_url_is_named_by_its_file(caplog):
    # Decision: the row is dropped with a warning naming its file (what astroquery logs); the
    # listing keeps what the archive said for a later "missing" error or partial-run record.
    rows, meta = mous_rows()
    lost = naming.asdm_tar(PROJECT, EBS[1])
    rows[-1] = dict(rows[-1], error_message="NotFoundFault: no such file in the NGAS cluster", content_length="")
    with caplog.at_level(logging.WARNING, "alma_regen.staging"):
        files = parse_votable(answer(rows, meta), "DataLink")
    assert files.errors == [(lost, "NotFoundFault: no such file in the NGAS cluster")]
    assert any(lost in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert sorted(classify(files, MOUS).asdms) == [EBS[0]]


def test_an_answer_of_error_rows_only_is_refused_where_the_files_are_needed():
    # Decision: not refused by the parser ("an error only if a needed file is missing"): the
    # listing has no auxiliary or product tar, and that error quotes the archive.
    files = parse_votable(answer([{"ID": MOUS, "error_message": "NotFoundFault: uid not found"}]), "DataLink")
    assert not files and files.errors
    with pytest.raises(NotFoundError, match="neither .*auxiliary.tar nor product tars.*NotFoundFault: uid not found"):
        classify(files, MOUS)


def test_an_auxiliary_tar_answered_with_an_error_is_missing_not_an_old_package():
    # Decision: a listing without auxiliary tar is an old package only when the archive did not
    # answer the auxiliary tar with an error; here it did: NotFoundError quoting it.
    rows, meta = mous_rows()
    aux = f"{PROJECT}_{naming.uid_to_file(MOUS)}_auxiliary.tar"
    rows = [dict(r, error_message="ReadFault: tape offline", content_length="") if r.get("access_url", "").endswith(aux)
            else r for r in rows]
    with pytest.raises(NotFoundError, match="ReadFault: tape offline"):
        classify(parse_votable(answer(rows, meta), "DataLink"), MOUS)


def test_readable_false_is_a_login_before_any_download():
    # Decision: proprietary rows (readable false) -> LoginNeededError at the listing, naming one.
    rows, meta = mous_rows()
    rows[-2] = dict(rows[-2], readable="false")
    with pytest.raises(LoginNeededError, match=f"login needed.*{naming.asdm_tar(PROJECT, EBS[0])}"):
        parse_votable(answer(rows, meta), "DataLink")


@pytest.mark.parametrize("length, message", [("", "no content_length"), ("-1", "negative content_length")])
def test_a_file_row_without_a_usable_size_is_refused(length, message):
    # Decision: a downloadable row with an empty or -1 content_length is a clear error (the size
    # is the only check of a download); descriptor rows may lack it (skipped above).
    rows, meta = mous_rows()
    rows[-1] = dict(rows[-1], content_length=length)
    with pytest.raises(DataLinkError, match=message):
        parse_votable(answer(rows, meta), "DataLink")


def test_two_rows_of_one_file_are_refused():
    rows, meta = mous_rows()
    rows.append(dict(rows[-1]))
    with pytest.raises(DataLinkError, match="listed twice"):
        parse_votable(answer(rows, meta), "DataLink")


def test_a_cycle4_listing_without_auxiliary_tar_is_an_old_package():
    # Decision: no auxiliary tar and no error about one -> the product tars are staged as the
    # whole package (scripts, calibration and README inside them).
    rows, meta = mous_rows(aux=False)
    listing = classify(parse_votable(answer(rows, meta), "DataLink"), MOUS)
    assert listing.auxiliary is None and listing.product_kind == "package"
    assert sorted(listing.asdms) == sorted(EBS)


def test_cycle0_dated_product_tars_are_the_mous_products():
    # Decision: Cycle 0's `<project>_<date>_<n>_of_<N>.tar` (names of the archive's download
    # scripts, e.g. 2011.0.00121.S_2012-07-30_001_of_002.tar) listed for the MOUS are its package.
    mous = "uid://A002/X3b3400/X8f"
    rows = [dict(file_row(f"2011.0.00121.S_2012-07-30_00{i}_of_002.tar", "#this", 1000 + i), ID=mous)
            for i in (1, 2)]
    rows.append(dict(file_row("2011.0.00121.S_uid___A002_X3b3400_X90f.asdm.sdm.tar", "#progenitor", 5000), ID=mous))
    listing = classify(parse_votable(answer(rows), "DataLink"), mous)
    assert listing.project == "2011.0.00121.S" and listing.product_kind == "package"
    assert [f.name for f in listing.products] == ["2011.0.00121.S_2012-07-30_001_of_002.tar",
                                                  "2011.0.00121.S_2012-07-30_002_of_002.tar"]
    assert list(listing.asdms) == ["uid://A002/X3b3400/X90f"]
