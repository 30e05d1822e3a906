"""Validate a raw ASDM directory and summarise it, without CASA.

An ASDM is complete when ASDM.xml, Main.xml, Antenna.xml and ASDMBinary/
exist, every table ASDM.xml lists with rows has its .xml or .bin file, and
every dataUID of Main.xml has its file in ASDMBinary/ (':' and '/' -> '_').
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import safexml
from .errors import DeliveryError
from .naming import data_uid_to_file

REQUIRED = ("ASDM.xml", "Main.xml", "Antenna.xml")


@dataclass
class AsdmInfo:
    path: str
    eb_uid: str
    tables: dict = field(default_factory=dict)  # name -> declared rows
    scans: int = 0
    antennas: int = 0
    spws: int = 0
    binaries: int = 0
    size_bytes: int = 0

    def as_dict(self):
        d = asdict(self)
        d.pop("tables")
        return d


def _table_rows(asdm_xml: Path) -> dict:
    root = safexml.parse_file(asdm_xml)
    tables = {}
    for t in safexml.find_all(root, "Table"):
        name = safexml.text_of(t, "Name")
        rows = safexml.text_of(t, "NumberRows")
        if not name:
            raise DeliveryError(asdm_xml, "a <Table> entry has no <Name>")
        try:
            tables[name] = int(rows)
        except (TypeError, ValueError):
            raise DeliveryError(asdm_xml, f"table {name}: <NumberRows> is not a number ({rows!r})") from None
    if not tables:
        raise DeliveryError(asdm_xml, "lists no <Table> entries")
    return tables


def _data_uids(main_xml: Path) -> list:
    root = safexml.parse_file(main_xml)
    uids = []
    for row in safexml.find_all(root, "row"):
        for el in row:
            if safexml.local(el.tag) == "dataUID":
                # <dataUID><EntityRef entityId="uid://..." .../></dataUID>
                ref = next((c for c in el.iter() if safexml.local(c.tag) == "EntityRef"), None)
                uid = ref.get("entityId") if ref is not None else (el.text or "").strip()
                if not uid:
                    raise DeliveryError(main_xml, "a row has an empty dataUID")
                uids.append(uid)
    return uids


def _eb_uid(exec_block_xml: Path) -> str:
    root = safexml.parse_file(exec_block_xml)
    for el in root.iter():
        if safexml.local(el.tag) == "execBlockUID":
            ref = next((c for c in el.iter() if safexml.local(c.tag) == "EntityRef"), None)
            if ref is not None and ref.get("entityId"):
                return ref.get("entityId")
    raise DeliveryError(exec_block_xml, "has no execBlockUID")


def validate_asdm(path) -> AsdmInfo:
    """Check an ASDM is complete; return its summary or raise DeliveryError."""
    path = Path(path)
    if not path.is_dir():
        raise DeliveryError(path, "is not an ASDM directory")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise DeliveryError(path, f"incomplete ASDM: {name} is missing")
    binary = path / "ASDMBinary"
    if not binary.is_dir():
        raise DeliveryError(path, "incomplete ASDM: ASDMBinary/ is missing")
    tables = _table_rows(path / "ASDM.xml")
    for name, rows in tables.items():
        if rows > 0 and not ((path / f"{name}.xml").is_file() or (path / f"{name}.bin").is_file()):
            raise DeliveryError(path, f"incomplete ASDM: table {name} has {rows} rows but no {name}.xml or {name}.bin")
    present = {p.name for p in binary.iterdir()}
    uids = _data_uids(path / "Main.xml")
    missing = [u for u in uids if data_uid_to_file(u) not in present]
    if missing:
        raise DeliveryError(path, f"incomplete ASDM: {len(missing)} of {len(uids)} binary data files missing "
                                  f"from ASDMBinary/ (first: {data_uid_to_file(missing[0])})")
    eb = _eb_uid(path / "ExecBlock.xml") if (path / "ExecBlock.xml").is_file() else ""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return AsdmInfo(
        path=str(path), eb_uid=eb, tables=tables,
        scans=tables.get("Scan", 0), antennas=tables.get("Antenna", 0),
        spws=tables.get("SpectralWindow", 0), binaries=len(uids), size_bytes=size,
    )


# ---------------------------------------------------------------- science spws, before the import
# scriptForPI splits the "science spws" of each imported MS: those with OBSERVE_TARGET data
# and more than 4 channels (msmetadata.spwsforintent('OBSERVE_TARGET*'), nchan > 4; v1.15 to
# v2.5). v2.5 reindexes the split only when these ids differ between the EBs, a decision over
# the whole MOUS that the per-EB restores cannot make alone; so it is read here from the
# ASDMs, before anything is imported, and the restore checks it against the imported MS.

SCIENCE_SCAN_INTENT = "OBSERVE_TARGET"
SCIENCE_MIN_CHANNELS = 5  # more than 4


def _rows(path: Path, *names) -> list:
    """Each <row> of an ASDM table as {name: text} for the given element names."""
    if not path.is_file():
        raise DeliveryError(path, "missing (an XML table is needed to read the spectral setup)")
    out = []
    for row in safexml.find_all(safexml.parse_file(path), "row"):
        out.append({n: safexml.text_of(row, n) for n in names})
    return out


def _ids(text, what, where) -> list:
    """An ASDM array of ids, `1 N Id_0 Id_1 ...` (dimension count, length, values)."""
    parts = (text or "").split()
    try:
        ndim, n = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise DeliveryError(where, f"{what}: not an ASDM array ({(text or '')[:60]!r})") from None
    if ndim != 1 or len(parts) != 2 + n:
        raise DeliveryError(where, f"{what}: not a one-dimensional array of {n} ids")
    return parts[2:]


def ms_spw_ids(path) -> dict:
    """ASDM spw id (`SpectralWindow_7`) -> the MS spw id importasdm gives it: SpectralWindow.xml's
    rows in order, first those a DataDescription uses, then the others (the same mapping as the
    pipeline's infrastructure/tablereader.py get_asdm_to_ms_spw_mapping)."""
    path = Path(path)
    spws = [r["spectralWindowId"] for r in _rows(path / "SpectralWindow.xml", "spectralWindowId")]
    used = {r["spectralWindowId"] for r in _rows(path / "DataDescription.xml", "spectralWindowId")}
    ordered = [s for s in spws if s in used] + [s for s in spws if s not in used]
    return {s: i for i, s in enumerate(ordered)}


def science_spws(path) -> list:
    """The MS spw ids scriptForPI splits out of this EB once imported: windows with data in an
    OBSERVE_TARGET scan and more than 4 channels, sorted. From SpectralWindow, DataDescription,
    ConfigDescription, Scan and Main (XML); a DeliveryError when one of them cannot be read."""
    path = Path(path)
    ms_id = ms_spw_ids(path)
    nchan = {}
    for r in _rows(path / "SpectralWindow.xml", "spectralWindowId", "numChan"):
        try:
            nchan[r["spectralWindowId"]] = int(r["numChan"])
        except (TypeError, ValueError):
            raise DeliveryError(path / "SpectralWindow.xml",
                                f"{r['spectralWindowId']}: numChan is not a number ({r['numChan']!r})") from None
    spw_of_dd = {r["dataDescriptionId"]: r["spectralWindowId"]
                 for r in _rows(path / "DataDescription.xml", "dataDescriptionId", "spectralWindowId")}
    dds_of_config = {r["configDescriptionId"]: _ids(r["dataDescriptionId"], r["configDescriptionId"],
                                                    path / "ConfigDescription.xml")
                     for r in _rows(path / "ConfigDescription.xml", "configDescriptionId", "dataDescriptionId")}
    target_scans = {r["scanNumber"] for r in _rows(path / "Scan.xml", "scanNumber", "scanIntent")
                    if SCIENCE_SCAN_INTENT in (r["scanIntent"] or "").split()}
    found = set()
    for r in _rows(path / "Main.xml", "scanNumber", "configDescriptionId"):
        if r["scanNumber"] not in target_scans:
            continue
        for dd in dds_of_config.get(r["configDescriptionId"], ()):
            spw = spw_of_dd.get(dd)
            if spw is None or spw not in ms_id:
                raise DeliveryError(path, f"Main row of scan {r['scanNumber']}: {dd} names no spectral window")
            if nchan.get(spw, 0) >= SCIENCE_MIN_CHANNELS:
                found.add(ms_id[spw])
    return sorted(found)
