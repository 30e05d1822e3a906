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
