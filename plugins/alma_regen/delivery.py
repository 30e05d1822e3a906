"""The delivery model: what an untarred ALMA member folder holds and needs.

Every later step (staging, calibration, imaging, publishing, the DAGs) asks
this model instead of globbing on its own. It reads, never writes.

`Delivery(member_dir).plan()` returns the documented, stable JSON object that
`alma-regen inspect --json` prints (schema "alma-regen/plan/1"):

    member_dir, mous_uid, project
    casa_version   {version, pipeline_version, source, decision} (version null if unknown;
                   decision: what a pipeline delivery without any version runs with, else null)
    calibration    {kind: restore|pipeline|manual|null, reason, script}
    imaging        {kind: pipeline|script|none, reason, script}
    scriptforpi    {version, rules_of, decided_by}  (the delivery's scriptForPI version, "v2.5", null if
                   unknown; rules_of: the version whose rules decide, the newest read when unknown)
    split          {needed, reasons, why, rule: manual|always|imaging-pipeline-used, decided_by,
                    scriptforpi_version, imaging_pipeline: {used, hif_makeimages_lines,
                    science_images, imaging_code_lines} | null, note}  (what scriptForPI would do)
    manual         (manual data only) {order: {rule: chronological|by-name, why, decided_by, ...},
                    runs: [{eb, script, kind: interferometric|single-dish}], ephemerides: [...]}
    scripts        {scriptForPI, restore, pipescript, imaging, imaging_prep, flux_calibration,
                    pol_calibration, calibration: [...], sd_calibration: [...]}
    ppr            {path, ebs}                                  (EB uids, uid://A002/...)
    staged         false for the plan made before the raw data are staged (`plan(staged=False)`)
    raw            {ebs: [{eb, asdm, state: ok|missing|invalid|to_stage, scans, antennas, spws,
                           size_bytes, problem}], extra: [...], missing: [EB uids]} (extra = semipass,
                   ignored; to_stage: not in raw/ yet, before staging; size_bytes then the archive's
                   tar size; missing: PPR EBs not in raw/, or not in the archive before staging: a
                   warning, as scriptForPI goes on with the rest (a partial run), an error with
                   require_all_ebs, and an error when no EB is left)
    disk           {raw_bytes, needed_bytes, needed_bytes_min, needed_bytes_max, free_bytes, enough,
                    estimated, rule}  (needed_bytes: scriptForPI's check at plan(spacesaving=...),
                   null for -1; min/max: at SPACESAVING 2..0; rule: Delivery.disk_rule; raw_bytes:
                   what scriptForPI's `du` measures of raw/ (Delivery.raw_bytes, every ASDM there);
                   estimated: from the archive's sizes of the PPR's EBs, before staging)
    problems       [{severity: error|warning, path, message}]
    ok             true when there is no error

Rules (scriptForPI's): scripts are matched by suffix, with or without the
`member.<MOUS>.` and recipe prefixes, and two matches are an error; a
casa_piperestorescript means restore, else a *cal*casa_pipescript (or one
without a recipe word) means the full pipeline calibration, else per-EB
*.ms.scriptForCalibration.py (and *.ms.scriptForSDCalibration.py) mean manual
calibration; scriptForImaging.py with only comments means the pipeline imaged.

scriptForPI's own rules, as read in real copies (v1.7 of 2014, v1.15 of 2015, v1.23
of 2017, v1.34 of 2022, v2.5 of 2023, the newest readable). Where versions differ the
delivery's own version decides (`Delivery.scriptforpi_version`, `followed_version`; the
*_SINCE constants below); without one, v2.5:
- split (`Delivery.split_needed`): see there; a non-trivial scriptForImagingPrep.py
  (the knowledge base's option 1) forces no split in any read version.
- disk (`disk_factor`, `Delivery.disk_rule`), manual order and SD scripts
  (`Delivery.manual_runs`): see there; calibration.run_manual runs them.
- PPR (`Delivery.ppr`): `*PPR*.xml` first (several: error), else `*pprequest.xml`,
  of several the `*cal*` one; v2.5 looks only for `*cal*pprequest.xml`, v1.23 for
  any: a single pprequest without `cal` is still taken (it is the only EB list).
- calibration pipescript (`Delivery.script("pipescript")`): v1.34/v2.5 take
  `*cal*casa_pipescript.py`, v1.23 any `*casa_pipescript.py`: a `*cal*` one first,
  else one whose name has no recipe word (older deliveries); a non-cal recipe
  (hifa_image) never calibrates.
- versions (`Delivery.casa_version`): README or QA2 report line, else the pipeline
  manifest; a pipeline delivery with none runs with the newest pipeline CASA
  installed or the native engine (a warning says so); manual data need the line.
"""
import fnmatch
import html
import re
import shutil
from pathlib import Path

from . import naming, safexml
from .asdm import validate_asdm
from .errors import AlmaRegenError, DeliveryError

SCHEMA = "alma-regen/plan/1"
_VERSION_PATTERN = (r"CASA\s+version(?:\s+used\s+for\s+(?:reduction|calibration|imaging|processing))?\s*{sep}\s*"
                    r"(?:CASA\s+)?([0-9]+\.[0-9]+\.[0-9]+(?:[-.][0-9]+)?)")
# In text a colon must follow the label ("Please use CASA version 6.5.4 or later" is no record);
# in an HTML report the label and the value may sit in two cells.
_VERSION_RE = re.compile(_VERSION_PATTERN.format(sep="[:=]"), re.I)
_VERSION_HTML_RE = re.compile(_VERSION_PATTERN.format(sep="[:=]?"), re.I)
# `Pipeline: 42030M (...)`, `Pipeline version: 2023.1.0.124`, `Pipeline version 2024.1.0.8`.
_PIPELINE_RE = re.compile(r"Pipeline(?:\s+version\s*[:=]?|\s*[:=])\s*(r?[0-9][^\s,;<]*)", re.I)
# Bounds on what is read of a README or QA2 report (hostile input): the version lines are
# near the top; a QA2 PDF's text comes from its first pages.
_TEXT_READ_LIMIT = 1 << 20
_PDF_MAX_BYTES = 32 << 20
_PDF_MAX_PAGES = 20
_QA_FOLDERS = ("qa", "qa2")     # Cycle 5+ and Cycles 1-3
_QA_SUFFIXES = (".html", ".htm", ".pdf", ".txt")
# scriptForPI's RCS keyword line; in the first lines of every copy read (the same text is
# posted to the CASA log further down, so a bounded read finds it).
_SFPI_ID_RE = re.compile(r"\$Id:\s*scriptForPI\.py,v\s+(\d+)\.(\d+)\b")
_VERSION_READ_LIMIT = 64 * 1024
_SCRIPT_SUFFIXES = {
    "scriptForPI": "scriptForPI.py",
    "restore": "casa_piperestorescript.py",
    "pipescript": "casa_pipescript.py",
    "imaging": "scriptForImaging.py",
    "imaging_prep": "scriptForImagingPrep.py",
    "flux_calibration": "scriptForFluxCalibration.py",
    "pol_calibration": "scriptForPolCalibration.py",
}
MANUAL_SUFFIX = ".ms.scriptForCalibration.py"
SD_MANUAL_SUFFIX = ".ms.scriptForSDCalibration.py"
# What is left of a pipescript's name before its suffix when it names no recipe:
# `member.<MOUS>.`, `<MOUS>.` (older pipelines exported `<MOUS>.casa_pipescript.py`) or nothing.
_NO_RECIPE_PREFIX = re.compile(r"^(?:member\.)?(?:uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+\.)?\Z")
# Said (a warning, and the plan's casa_version.decision) when a pipeline-calibrated
# delivery records no version anywhere: calibration.plan then passes no version to the
# CASA registry, which picks the newest pipeline CASA, and the native restore modular CASA.
NO_VERSION_DECISION = ("no CASA version in README, QA2 report or manifest: the newest pipeline CASA installed "
                       "is used, or the native engine on modular CASA")


# ------------------------------------------------------------ scriptForPI's versions
# The copies read (through the code search; never copied): v1.7 (2014), v1.15 (2015),
# v1.23 (2017), v1.34 (2022), v2.5 (2023). Each rule below names the first read version
# that has it; a version between two read ones that differ (never seen) follows the newer
# read one, and a delivery without a readable scriptForPI follows the newest (v2.5).
NEWEST_READ = (2, 5)
# "Imaging pipeline used" (no split unless DOSPLIT): v1.23 on; v1.15 always splits.
IMAGING_PIPELINE_RULE_SINCE = (1, 16)
# Manual EBs in chronological order (the uid's hex parts zero-padded before sorting):
# v1.34 on; v1.23 sorts the names as they are.
CHRONOLOGICAL_ORDER_SINCE = (1, 24)
# Single-dish manual scripts (*.ms.scriptForSDCalibration.py) run after the interferometric
# ones: v1.34 on; v1.23 does not look for them.
SD_SCRIPTS_SINCE = (1, 24)
# The disk check's f counts flux, polarisation and ImagingPrep scripts from v1.15 on; v1.7
# counted only a flux script.
DISK_F_ALL_SCRIPTS_SINCE = (1, 8)
# An amplitude renormalisation in scriptForFluxCalibration.py (`ACreNorm`) limits
# SPACESAVING to 1 (its processing needs the *.ms): v1.34 on; v2.5 also takes
# `Renormalization` in scriptForPolCalibration.py when there is no flux script.
RENORM_FLUX_SINCE = (1, 24)
RENORM_POL_SINCE = (2, 0)


def version_text(v) -> str:
    return f"v{v[0]}.{v[1]}" if v else "none"


def followed_version(v) -> tuple:
    """The scriptForPI version whose rules apply: the delivery's own, else the newest read."""
    return tuple(v) if v else NEWEST_READ


def decided_by(v) -> str:
    """Which scriptForPI decided, for a person: `scriptForPI v2.5 (the delivery's)`."""
    if v:
        return f"scriptForPI {version_text(v)} (the delivery's)"
    return f"scriptForPI {version_text(NEWEST_READ)} (the newest read; the delivery's version is unknown)"


def disk_factor(spacesaving: int, f: int) -> int | None:
    """scriptForPI's disk check, as a multiple of `du -sm raw/` (every read version from v1.7
    to v2.5): 11 + 3f MB per MB of raw data, 7 + 3f with SPACESAVING=1, 3 + 3f with
    SPACESAVING >= 2, where f = 1 when a flux, polarisation or ImagingPrep script exists;
    None for SPACESAVING=-1 (no check). The one rule behind the plan's disk section,
    calibration.preflight_disk and the bulk footprint's default (admission.footprint: 11 =
    SPACESAVING 0 without such scripts)."""
    if spacesaving == -1:
        return None
    base = 11 if spacesaving <= 0 else 7 if spacesaving == 1 else 3
    return base + 3 * (1 if f else 0)


def manual_sort_key(name: str) -> str:
    """scriptForPI's chronological order of manual scripts (v1.34, v2.5): EB uids hold hex
    numbers without leading zeros, so the last two `X<hex>` parts of the name are
    zero-padded to 5 digits before the names are compared (`..._X5c1` before `..._X47af`).
    A name it cannot read so keeps its own text."""
    parts = name.split("_")
    if len(parts) < 2:
        return name
    last = parts[-1].split(".", 1)[0]
    if not (last.startswith("X") and parts[-2].startswith("X")):
        return name
    parts[-1] = "X" + last[1:].zfill(5)
    parts[-2] = "X" + parts[-2][1:].zfill(5)
    return "_".join(parts)


def _read_text(path: Path, limit: int = _TEXT_READ_LIMIT) -> str:
    with open(path, "rb") as fh:
        return fh.read(limit).decode("utf-8", "replace")


def _html_text(text: str) -> str:
    """The text of an HTML page: tags out, entities decoded, spaces folded (a QA2 report
    puts the label and the version in separate cells)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", text)))


def pdf_text(path: Path) -> str:
    """The text of a QA2 report PDF (pypdf), bounded: its size, its first pages. A PDF from
    the archive is hostile input: anything that goes wrong reading it is one DeliveryError."""
    size = path.stat().st_size
    if size > _PDF_MAX_BYTES:
        raise DeliveryError(path, f"is {_size(size)}, more than the {_size(_PDF_MAX_BYTES)} read of a QA2 "
                                  "report: skipped")
    import logging
    from pypdf import PdfReader
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on odd files are not ours
    try:
        with open(path, "rb") as fh:
            reader = PdfReader(fh, strict=False)
            texts = []
            for page in reader.pages[:_PDF_MAX_PAGES]:
                texts.append(page.extract_text() or "")
                if sum(map(len, texts)) > _TEXT_READ_LIMIT:
                    break
        return "\n".join(texts)
    except Exception as exc:  # noqa: BLE001  (hostile input: pypdf raises many kinds)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DeliveryError(path, f"cannot be read as a PDF ({detail}): skipped") from None


class Problems(list):
    def error(self, path, message):
        self.append({"severity": "error", "path": str(path), "message": message})

    def warning(self, path, message):
        self.append({"severity": "warning", "path": str(path), "message": message})


def _names(folder: Path, problems: Problems) -> list:
    """File names of a folder, refusing (and reporting) names that are not UTF-8."""
    if not folder.is_dir():
        return []
    good = []
    for p in sorted(folder.iterdir()):
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            shown = p.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            problems.error(folder, f"file name is not valid UTF-8: {shown!r} (rename it)")
            continue
        good.append(p)
    return good


def _is_code(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def find_pipeline_manifest(member_dir) -> Path | None:
    """The pipeline manifest hifa_restoredata would read: calibration/ (scriptForPI
    also looks in script/); of several, the `*cal*pipeline_manifest.xml` ones."""
    member = Path(member_dir)
    for folder in (member / "calibration", member / "script"):
        found = sorted(folder.glob("*pipeline_manifest.xml"))
        cal = [p for p in found if "cal" in p.name[: -len("pipeline_manifest.xml")]]
        if len(found) > 1 and 0 < len(cal) < len(found):
            found = cal
        if len(found) > 1:
            raise DeliveryError(folder, f"{len(found)} pipeline manifests: {', '.join(p.name for p in found)} "
                                        "(cannot tell which one holds the calibration)")
        if found:
            return found[0]
    return None


class Delivery:
    """A member folder: member.<MOUS>/ with README, script/, calibration/, raw/..."""

    def __init__(self, member_dir):
        self.path = Path(member_dir)
        if not self.path.is_dir():
            raise DeliveryError(self.path, "is not a folder (expected an untarred member.<MOUS> folder)")
        # What listing script/ found (names that are not UTF-8): every plan starts from these.
        self._listing_problems = Problems()
        self._script_files = _names(self.path / "script", self._listing_problems)
        self.problems = Problems(self._listing_problems)

    # ------------------------------------------------------------ identity
    @property
    def mous_uid(self) -> str | None:
        return naming.mous_of_member_dir(self.path.name)

    # ------------------------------------------------------------ scripts
    def script(self, role: str) -> Path | None:
        """The one script of this role (by suffix), None if absent; two is an error."""
        suffix = _SCRIPT_SUFFIXES[role]
        found = [p for p in self._script_files if p.name == suffix or p.name.endswith("." + suffix)]
        if role == "pipescript":
            # scriptForPI v1.34 and v2.5 glob `*cal*casa_pipescript.py` (hifa_cal*,
            # hifa_calimage, hsd_calimage): an imaging-only recipe cannot calibrate.
            # v1.23 took any `*casa_pipescript.py`, which the deliveries of its time
            # named without a recipe word (`member.<MOUS>.casa_pipescript.py`,
            # `<MOUS>.casa_pipescript.py`): those are taken when no `*cal*` one exists.
            found = [p for p in found if "cal" in p.name[: -len(suffix)]] or (
                [p for p in found if _NO_RECIPE_PREFIX.match(p.name[: -len(suffix)])])
        if len(found) > 1:
            raise DeliveryError(self.path / "script",
                                f"{len(found)} candidates for *{suffix}: "
                                f"{', '.join(p.name for p in found)} (keep exactly one)")
        return found[0] if found else None

    def scriptforpi_version(self) -> tuple | None:
        """The version of the delivery's own scriptForPI as (major, minor), e.g. (2, 5),
        from its RCS line `# $Id: scriptForPI.py,v 2.5 2023/10/03 ... $` (every read copy,
        v1.7 of 2014 to v2.5 of 2023, states it so, the prefixed names too). None when there
        is no scriptForPI, two of them, or no such line. Read as text (bounded), never run."""
        if not hasattr(self, "_sfpi_version"):
            self._sfpi_version = None
            try:
                script = self.script("scriptForPI")
                if script is not None:
                    with open(script, "rb") as fh:
                        head = fh.read(_VERSION_READ_LIMIT).decode("utf-8", "replace")
                    m = _SFPI_ID_RE.search(head)
                    if m:
                        self._sfpi_version = (int(m.group(1)), int(m.group(2)))
            except (DeliveryError, OSError):
                pass
        return self._sfpi_version

    def manual_scripts(self) -> list:
        """The per-EB `*uid*.ms.scriptForCalibration.py`, in the order scriptForPI runs them:
        chronological (see manual_sort_key) from v1.34 on, the names as they sort in v1.23."""
        found = [p for p in self._script_files if p.name.endswith(MANUAL_SUFFIX) and "uid" in p.name]
        if self.manual_order()["rule"] == "chronological":
            return sorted(found, key=lambda p: manual_sort_key(p.name))
        return sorted(found, key=lambda p: p.name)

    def sd_calibration_scripts(self) -> list:
        """The per-EB `*uid*.ms.scriptForSDCalibration.py` (single dish), sorted by name, run
        after the interferometric ones (v1.34, v2.5; v1.23 does not look for them: []).
        """
        if followed_version(self.scriptforpi_version()) < SD_SCRIPTS_SINCE:
            return []
        return sorted((p for p in self._script_files if p.name.endswith(SD_MANUAL_SUFFIX) and "uid" in p.name),
                      key=lambda p: p.name)

    def manual_order(self) -> dict:
        """How scriptForPI orders the manual EB scripts, and which version decided it."""
        v = self.scriptforpi_version()
        if followed_version(v) >= CHRONOLOGICAL_ORDER_SINCE:
            rule, why = "chronological", "by EB uid with its hex parts zero-padded (observing order)"
        else:
            rule, why = "by-name", "by file name as it is (v1.23; not always the observing order)"
        return {"rule": rule, "why": why, "scriptforpi_version": version_text(v) if v else None,
                "decided_by": decided_by(v)}

    def manual_runs(self) -> list:
        """What scriptForPI runs for manual data, in its order: each EB's calibration script
        ([{"eb", "script", "kind": "interferometric"|"single-dish"}], EB as uid://...). The
        EB is the name's tail from its last `uid__`, as v1.34 and v2.5 read it."""
        runs = []
        for kind, suffix, scripts in (("interferometric", MANUAL_SUFFIX, self.manual_scripts()),
                                      ("single-dish", SD_MANUAL_SUFFIX, self.sd_calibration_scripts())):
            for p in scripts:
                stem = p.name[: -len(suffix)]
                try:
                    eb = naming.file_to_uid(stem[stem.rfind("uid__"):])
                except AlmaRegenError:
                    raise DeliveryError(p, "does not end in an EB uid (uid___A002_X..._X...): cannot tell "
                                           "which ASDM it calibrates") from None
                runs.append({"eb": eb, "script": p.name, "kind": kind})
        return runs

    # ------------------------------------------------------------ CASA version
    def _version_sources(self) -> list:
        """README (any `*README*`: `README`, `member.<MOUS>.README.txt`), then the QA2
        reports of qa/ (Cycle 5+) and qa2/ (Cycles 1-3), HTML, text or PDF."""
        readmes = [p for p in _names(self.path, self.problems) if "readme" in p.name.lower() and p.is_file()]
        # member.<MOUS>.README.txt first: the member's own.
        readmes.sort(key=lambda p: (not p.name.startswith("member."), p.name))
        qa = [p for folder in _QA_FOLDERS for p in _names(self.path / folder, self.problems)
              if p.suffix.lower() in _QA_SUFFIXES and p.is_file()]
        return readmes + qa

    def _source_text(self, src: Path) -> str:
        if src.suffix.lower() == ".pdf":
            return pdf_text(src)
        text = _read_text(src)
        return _html_text(text) if src.suffix.lower() in (".html", ".htm") else text

    def casa_version(self) -> dict:
        """The CASA (and pipeline) version of the reduction, from the README or a QA2 report
        (qa/ or qa2/; HTML, text or PDF; the old `CASA version: 5.4.0-70, Pipeline: ...` and
        the `CASA version used for reduction: ...` forms), else from the pipeline manifest
        (modern READMEs have no version line). A report that cannot be read is a warning."""
        sources = self._version_sources()
        skipped = []
        for src in sources:
            try:
                text = self._source_text(src)
            except DeliveryError as exc:
                self.problems.warning(exc.path, exc.detail)
                skipped.append(src.name)
                continue
            except OSError as exc:
                self.problems.warning(src, f"cannot be read ({exc.strerror or exc}): skipped")
                skipped.append(src.name)
                continue
            m = (_VERSION_HTML_RE if src.suffix.lower() in (".html", ".htm") else _VERSION_RE).search(text)
            if m:
                pm = _PIPELINE_RE.search(text)
                return {"version": m.group(1), "pipeline_version": pm.group(1) if pm else None,
                        "source": str(src), "decision": None}
        manifest = find_pipeline_manifest(self.path)
        if manifest is not None:
            ous = safexml.parse_file(manifest)
            casa, pipe = safexml.find_all(ous, "casaversion"), safexml.find_all(ous, "pipeline_version")
            if casa and casa[0].get("name"):
                return {"version": casa[0].get("name"), "source": str(manifest),
                        "pipeline_version": pipe[0].get("name") if pipe else None, "decision": None}
        if self._pipeline_calibrated():
            # Modern READMEs say "install the latest CASA" and some deliveries carry no
            # manifest version: pipeline-calibrated data may use a newer pipeline CASA
            # (the pipeline is backward compatible), so this is a decision to state, not a stop. Manual data need
            # the exact version: they still stop below.
            return {"version": None, "pipeline_version": None, "source": None, "decision": NO_VERSION_DECISION}
        if not sources:
            raise DeliveryError(self.path, "no README (member.<MOUS>.README.txt), QA2 report (qa/, qa2/) or "
                                           "pipeline manifest with <casaversion> to read the CASA version from")
        raise DeliveryError(sources[0], "has no 'CASA version used for reduction: X.Y.Z-N' line "
                                        f"(nor does {', '.join(s.name for s in sources[1:]) or 'any QA2 report'}"
                                        + (f"; unreadable: {', '.join(skipped)}" if skipped else "")
                                        + ", and no pipeline manifest has a <casaversion>)")

    def _pipeline_calibrated(self) -> bool:
        """True when the pipeline calibrated this delivery (a restore or a calibration
        pipescript); False for manual calibration or when it cannot be told."""
        try:
            return self.calibration_kind()["kind"] in ("restore", "pipeline")
        except DeliveryError:
            return False

    # ------------------------------------------------------------ PPR
    def ppr(self) -> Path | None:
        """The PPR as scriptForPI picks it: `*PPR*.xml` (the old naming) first, else the
        `*pprequest.xml`, of several the one with `cal` in its name (v2.5's
        `*cal*pprequest.xml`: a calibration and an imaging-only PPR side by side). v2.5
        ignores a pprequest without `cal`; v1.23 took any: a single one is taken here,
        as it is the only EB list the delivery has. Several left is an error."""
        old = [p for p in self._script_files if "PPR" in p.name and p.name.endswith(".xml")]
        if old:
            found, what = old, "*PPR*.xml"
        else:
            found = [p for p in self._script_files if p.name.endswith("pprequest.xml")]
            what = "*pprequest.xml"
            cal = [p for p in found if "cal" in p.name[: -len("pprequest.xml")]]
            if len(found) > 1 and cal:
                found, what = cal, "*cal*pprequest.xml"
        if len(found) > 1:
            raise DeliveryError(self.path / "script", f"{len(found)} {what} files, scriptForPI needs one: "
                                f"{', '.join(p.name for p in found)} (keep exactly one)")
        return found[0] if found else None

    def ppr_ebs(self) -> list:
        """The EBs the PPR lists (<AsdmDiskName>), as uid://A002/... strings, in order."""
        ppr = self.ppr()
        if ppr is None:
            manual = self.manual_runs()
            if manual:
                # In the order scriptForPI runs them (interferometric, then single dish).
                return list(dict.fromkeys(r["eb"] for r in manual))
            raise DeliveryError(self.path / "script", "no PPR (PPR_*.xml or *pprequest.xml) and no "
                                                      "*.ms.scriptForCalibration.py: cannot tell which EBs belong here")
        root = safexml.parse_file(ppr)
        names = [(el.text or "").strip() for el in safexml.find_all(root, "AsdmDiskName")]
        if not names:
            raise DeliveryError(ppr, "lists no <AsdmDiskName>: no EB to regenerate")
        ebs = []
        for n in names:
            try:
                uid = naming.file_to_uid(n)
            except AlmaRegenError:
                raise DeliveryError(ppr, f"<AsdmDiskName> {n!r} is not an EB uid") from None
            if uid not in ebs:
                ebs.append(uid)
        return ebs

    def ebs_not_in_raw(self, ebs: list | None = None) -> list:
        """The PPR's EBs (or `ebs`) whose ASDM folder is not in raw/: a partial run's missing EBs,
        as scriptForPI v2.5 finds them ("absent from directory raw"). The one test of it for the
        calibration (calibration.present_ebs), the imaging choice and the published manifest;
        raw_state (the plan) also checks the ASDMs that are there."""
        raw = self.path / "raw"
        return [eb for eb in (self.ppr_ebs() if ebs is None else ebs) if not (raw / naming.asdm_dir(eb)).is_dir()]

    # ------------------------------------------------------------ decisions
    def calibration_kind(self) -> dict:
        restore, pipe = self.script("restore"), self.script("pipescript")
        manual = [self.path / "script" / r["script"] for r in self.manual_runs()]
        if restore:
            return {"kind": "restore", "script": restore.name,
                    "reason": f"{restore.name} is present: apply the delivered calibration"}
        if pipe:
            return {"kind": "pipeline", "script": pipe.name,
                    "reason": f"no casa_piperestorescript.py, {pipe.name} is present: rerun the calibration pipeline"}
        if manual:
            return {"kind": "manual", "script": ", ".join(p.name for p in manual),
                    "reason": f"{len(manual)} per-EB calibration script(s) (*.ms.scriptForCalibration.py, "
                              "*.ms.scriptForSDCalibration.py): manual calibration, exact CASA version"}
        raise DeliveryError(self.path / "script", "no casa_piperestorescript.py, *cal*casa_pipescript.py or "
                                                  "*.ms.scriptForCalibration.py: nothing can calibrate this delivery")

    def imaging_kind(self) -> dict:
        script = self.script("imaging")
        if script is None:
            return {"kind": "none", "script": None, "reason": "no scriptForImaging.py in script/"}
        code = [ln for ln in script.read_bytes().decode("utf-8", "replace").splitlines() if _is_code(ln)]
        if not code:
            return {"kind": "pipeline", "script": script.name,
                    "reason": f"{script.name} has only comments: the pipeline made the images"}
        return {"kind": "script", "script": script.name,
                "reason": f"{script.name} holds {len(code)} lines of commands: manual imaging"}

    def imaging_prep_nontrivial(self) -> bool:
        prep = self.script("imaging_prep")
        if prep is None:
            return False
        # A line that does not contain '#' (the knowledge base's "non-trivial").
        return any(ln.strip() and "#" not in ln for ln in _read_text(prep).splitlines())

    def imaging_pipeline_used(self) -> dict:
        """scriptForPI's "imaging pipeline used" test (v1.23, v1.34, v2.5 alike), counted as
        its shell commands count: more than one PPR line holding `hif_makeimages`
        (`grep | wc -l`), at least one product/*_sci.spw*.fits, and no line without '#' in
        script/*scriptForImaging.py (`cat | grep -v "#" | wc -l`: a blank line counts as
        one; no such script counts as none)."""
        ppr = self.ppr()
        out = {"used": False, "hif_makeimages_lines": None, "science_images": None, "imaging_code_lines": None}
        if ppr is None:
            return out
        out["hif_makeimages_lines"] = sum("hif_makeimages" in ln for ln in _read_text(ppr).splitlines())
        product = self.path / "product"
        out["science_images"] = len([p for p in _names(product, Problems()) if fnmatch.fnmatchcase(p.name, "*_sci.spw*.fits")])
        imaging = [p for p in self._script_files if p.name.endswith("scriptForImaging.py")]
        out["imaging_code_lines"] = sum(1 for p in imaging for ln in _read_text(p).splitlines() if "#" not in ln)
        out["used"] = (out["hif_makeimages_lines"] > 1 and out["science_images"] > 0
                       and out["imaging_code_lines"] == 0)
        return out

    def split_needed(self, dosplit: bool = False) -> dict:
        """Whether scriptForPI splits the science spws into <EB>.ms.split.cal, and why, by the
        rules of the delivery's scriptForPI version (`rule`, `decided_by`):
        - manual data: each EB's script makes <EB>.ms.split.cal itself (`manual`);
        - v1.15 and older: always (`always`);
        - v1.23 on: unless the imaging pipeline was used (imaging_pipeline_used) and DOSPLIT
          is off (`imaging-pipeline-used`). A non-trivial scriptForImagingPrep.py (the knowledge
          base's option 1) does not count in any read version: only a note says so.
        `reasons` lists why the split is needed ([] when it is not); `why` says it either way."""
        v = self.scriptforpi_version()
        base = {"scriptforpi_version": version_text(v) if v else None, "decided_by": decided_by(v),
                "imaging_pipeline": None, "note": None}
        try:
            kind = self.calibration_kind()["kind"]
        except DeliveryError:  # reported by the calibration decision itself
            kind = None
        if kind == "manual":
            why = "manual calibration: each EB's calibration script makes <EB>.ms.split.cal itself"
            return {**base, "needed": True, "reasons": [why], "why": why, "rule": "manual"}
        if followed_version(v) < IMAGING_PIPELINE_RULE_SINCE:
            why = f"scriptForPI {version_text(v)} always splits (no imaging-pipeline rule, no DOSPLIT)"
            return {**base, "needed": True, "reasons": [why], "why": why, "rule": "always"}
        used = self.imaging_pipeline_used()
        base.update(rule="imaging-pipeline-used", imaging_pipeline=used)
        counts = (f"PPR: {used['hif_makeimages_lines']} line(s) with hif_makeimages; product/: "
                  f"{used['science_images']} *_sci.spw*.fits; scriptForImaging.py: "
                  f"{used['imaging_code_lines']} line(s) without '#'")
        if used["hif_makeimages_lines"] is None:
            counts = "no PPR to tell"
        reasons = []
        if dosplit:
            reasons.append("DOSPLIT=True")
        if not used["used"]:
            reasons.append(f"the imaging pipeline was not used alone ({counts})")
        if reasons:
            why = "; ".join(reasons)
        else:
            why = f"the imaging pipeline made the images ({counts}): <EB>.ms is linked, not split (DOSPLIT=True splits)"
            if self.imaging_prep_nontrivial():
                base["note"] = ("scriptForImagingPrep.py has code, but scriptForPI (v1.23 to v2.5) decides the "
                                "split by scriptForImaging.py alone: set DOSPLIT to split")
        return {**base, "needed": bool(reasons), "reasons": reasons, "why": why}

    # ------------------------------------------------------------ raw/
    def raw_state(self, ebs: list, staged: bool = True, archive_sizes: dict | None = None,
                  require_all: bool = False) -> dict:
        """Each EB's ASDM in raw/. Before staging (`staged=False`) an ASDM not there yet is
        `to_stage`, sized by `archive_sizes` ({EB: bytes of its tar}) when given, and `missing`
        when the archive's sizes do not list it. A missing EB is scriptForPI v2.5's "absent from
        directory raw ... Will try to proceed with the rest": a warning (an error with `require_all`,
        or when none is left: its "Nothing to process")."""
        from .staging.missing import read_missing_ebs
        said = {m.get("eb"): m.get("archive") for m in read_missing_ebs(self.path)}
        raw = self.path / "raw"
        present = {p.name: p for p in _names(raw, self.problems) if p.name.endswith(".asdm.sdm") and p.is_dir()}
        states = []
        for eb in ebs:
            name = naming.asdm_dir(eb)
            entry = {"eb": eb, "asdm": name, "state": "missing", "scans": None, "antennas": None,
                     "spws": None, "size_bytes": None, "problem": None}
            if name in present:
                try:
                    info = validate_asdm(present.pop(name))
                except DeliveryError as exc:
                    entry.update(state="invalid", problem=str(exc))
                    self.problems.error(exc.path, exc.detail)
                else:
                    entry.update(state="ok", scans=info.scans, antennas=info.antennas, spws=info.spws,
                                 size_bytes=info.size_bytes)
                    if info.eb_uid and info.eb_uid != eb:
                        entry.update(state="invalid", problem=f"ExecBlock.xml says {info.eb_uid}")
                        self.problems.error(raw / name, f"ExecBlock.xml names {info.eb_uid}, the PPR expects {eb}")
            elif not staged and (archive_sizes is None or eb in archive_sizes):
                entry.update(state="to_stage", size_bytes=(archive_sizes or {}).get(eb))
            else:
                where = "the archive does not list it" if not staged else "raw/ does not hold its ASDM"
                why = f" ({said[eb]})" if said.get(eb) else ""
                if require_all:
                    self.problems.error(raw / name, f"missing: the PPR lists this EB but {where}{why}")
                else:
                    self.problems.warning(raw / name, f"missing: the PPR lists this EB but {where}{why}: going on "
                                                      "with the other EBs as scriptForPI does, the run is partial "
                                                      "(require_all_ebs makes this an error)")
            states.append(entry)
        missing = [e["eb"] for e in states if e["state"] == "missing"]
        if missing and len(missing) == len(states) and not require_all:
            self.problems.error(raw, "none of the PPR's EBs is " + ("in raw/" if staged else "in the archive")
                                + ": nothing to process")
        extra = sorted(present)
        for name in extra:
            self.problems.warning(raw / name, "not in the PPR (QA semipass?): ignored")
        return {"ebs": states, "extra": extra, "missing": missing}

    def disk_rule(self, spacesaving: int = 0) -> dict:
        """scriptForPI's disk check for this delivery (see disk_factor): f from the flux,
        polarisation and ImagingPrep scripts in script/ (v1.7: the flux script only), and
        SPACESAVING limited to 1 when a renormalisation script needs the *.ms (v1.34 on:
        `ACreNorm` in the flux script; v2.5 also `Renormalization` in the polarisation
        script when there is no flux script). `factor` None: the check is skipped (-1)."""
        v = self.scriptforpi_version()
        fv = followed_version(v)
        roles = ("flux_calibration", "pol_calibration", "imaging_prep") if fv >= DISK_F_ALL_SCRIPTS_SINCE \
            else ("flux_calibration",)
        scripts = []
        for role in roles:
            try:
                found = self.script(role)
            except DeliveryError:  # two of them: scriptForPI stops; here it still counts for f
                found = True
            if found:
                scripts.append(_SCRIPT_SUFFIXES[role])
        effective, renorm = spacesaving, None
        flux, pol = self._script_or_none("flux_calibration"), self._script_or_none("pol_calibration")
        if fv >= RENORM_FLUX_SINCE and flux is not None and "ACreNorm" in _read_text(flux):
            renorm = f"{flux.name} applies the amplitude renormalisation (ACreNorm)"
        elif fv >= RENORM_POL_SINCE and flux is None and pol is not None and "Renormalization" in _read_text(pol):
            renorm = f"{pol.name} applies the amplitude renormalisation"
        if renorm and spacesaving > 1:
            effective = 1
        f = 1 if scripts else 0
        factor = disk_factor(effective, f)
        if factor is None:
            formula = "SPACESAVING=-1: no disk check"
        else:
            base = factor - 3 * f
            formula = f"{base} + 3 x {f} = {factor} x raw/ (SPACESAVING={effective}" + \
                (f", f=1: {', '.join(scripts)})" if f else ")")
        return {"spacesaving": spacesaving, "effective_spacesaving": effective, "f": f, "scripts": scripts,
                "renormalisation": renorm, "factor": factor, "formula": formula,
                "scriptforpi_version": version_text(v) if v else None, "decided_by": decided_by(v)}

    def raw_bytes(self) -> int:
        """What scriptForPI's check measures (`du -smc raw/`): every ASDM in raw/, semipass ones
        too, each followed through a link (staging may link an ASDM from a cache; du would count
        the link only, and the check would pass on nothing). The plan's disk and
        calibration.preflight_disk both measure this."""
        raw = self.path / "raw"
        if not raw.is_dir():
            return 0
        return sum(_tree_size(p.resolve()) for p in sorted(raw.iterdir()) if p.name.endswith(".asdm.sdm"))

    def _script_or_none(self, role):
        try:
            return self.script(role)
        except DeliveryError:
            return None

    def disk(self, raw_bytes: int, estimated: bool = False, spacesaving: int = 0) -> dict:
        """The disk check for `raw_bytes` of raw data: `needed_bytes` at this SPACESAVING
        (None when -1 skips it), and the range over SPACESAVING 2..0 (`needed_bytes_min`,
        `needed_bytes_max`)."""
        rule = self.disk_rule(spacesaving)
        free = shutil.disk_usage(self.path).free
        f = rule["f"]
        need = raw_bytes * rule["factor"] if rule["factor"] is not None else None
        return {"raw_bytes": raw_bytes, "needed_bytes": need, "needed_bytes_min": raw_bytes * disk_factor(2, f),
                "needed_bytes_max": raw_bytes * disk_factor(0, f), "free_bytes": free,
                "enough": need is None or free >= need, "estimated": estimated, "rule": rule}

    # ------------------------------------------------------------ the plan
    def plan(self, staged: bool = True, archive_sizes: dict | None = None, spacesaving: int = 0,
             require_all_ebs: bool = False) -> dict:
        """Everything at once, each problem reported rather than raised.

        staged=False: the plan before the raw data are staged (see `raw_state`); the
        disk is then estimated from `archive_sizes` when given. spacesaving: the SPACESAVING
        the disk check is judged at (0, scriptForPI's default when unset). A Delivery is kept
        for a whole step (alma_regen.member.Member.delivery): each plan reports its own
        problems afresh."""
        p = self.problems = Problems(self._listing_problems)
        out = {"schema": SCHEMA, "member_dir": str(self.path), "mous_uid": self.mous_uid, "project": None,
               "staged": staged}

        def attempt(fn, default):
            try:
                return fn()
            except DeliveryError as exc:
                p.error(exc.path, exc.detail)
                return default

        out["casa_version"] = attempt(self.casa_version, {"version": None, "pipeline_version": None, "source": None,
                                                          "decision": None})
        if out["casa_version"]["decision"]:
            p.warning(self.path, out["casa_version"]["decision"])
        out["calibration"] = attempt(self.calibration_kind, {"kind": None, "script": None, "reason": None})
        out["imaging"] = attempt(self.imaging_kind, {"kind": None, "script": None, "reason": None})
        v = self.scriptforpi_version()
        out["scriptforpi"] = {"version": version_text(v) if v else None,
                              "rules_of": version_text(followed_version(v)), "decided_by": decided_by(v)}
        out["split"] = attempt(self.split_needed, {"needed": None, "reasons": [], "why": None, "rule": None,
                                                   "decided_by": decided_by(v)})
        if out["calibration"]["kind"] == "manual":
            out["manual"] = {"order": self.manual_order(), "runs": attempt(self.manual_runs, []),
                             "ephemerides": [q.name for q in _names(self.path / "calibration", Problems())
                                             if q.name.endswith(".eph")]}
        scripts = {}
        for role in _SCRIPT_SUFFIXES:
            s = attempt(lambda r=role: self.script(r), None)
            scripts[role] = s.name if s else None
        scripts["calibration"] = [s.name for s in self.manual_scripts()]
        scripts["sd_calibration"] = [s.name for s in self.sd_calibration_scripts()]
        out["scripts"] = scripts
        try:
            ppr = self.ppr()
        except DeliveryError as exc:
            p.error(exc.path, exc.detail)
            ppr, ebs = None, []  # ppr_ebs would only say the same again
        else:
            ebs = attempt(self.ppr_ebs, [])
        out["ppr"] = {"path": str(ppr) if ppr else None, "ebs": ebs}
        if ppr is not None:
            try:
                root = safexml.parse_file(ppr)
                out["project"] = safexml.text_of(root, "ProposalCode") or None
            except DeliveryError:
                pass
        out["raw"] = self.raw_state(ebs, staged, archive_sizes, require_all_ebs)
        estimated = any(e["state"] == "to_stage" for e in out["raw"]["ebs"])
        # Before staging: the PPR EBs' sizes (the archive's for those to stage); after: raw/ as
        # scriptForPI measures it, as the calibration's preflight will.
        raw_bytes = sum(e["size_bytes"] or 0 for e in out["raw"]["ebs"]) if estimated else self.raw_bytes()
        out["disk"] = self.disk(raw_bytes, estimated=estimated, spacesaving=spacesaving)
        if raw_bytes and not out["disk"]["enough"]:
            p.warning(self.path, f"free disk {_size(out['disk']['free_bytes'])} is less than scriptForPI's check "
                                 f"needs: {out['disk']['rule']['formula']} = {_size(out['disk']['needed_bytes'])}")
        # One problem once (a PPR error reached through two decisions).
        out["problems"] = list({(x["severity"], x["path"], x["message"]): x for x in p}.values())
        out["ok"] = not any(x["severity"] == "error" for x in out["problems"])
        return out


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _size(n: int) -> str:
    """Bytes for a person: 2.50 GB, 4.6 MB, 20 kB."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _split_line(split: dict) -> str:
    if split["needed"] is None:
        return "?"
    head = "yes" if split["needed"] else "no"
    why = split.get("why") or "; ".join(split["reasons"])
    rule = f" [rule: {split['rule']}]" if split.get("rule") else ""
    return f"{head}: {why}{rule}" if why else head


def format_plan(plan: dict) -> str:
    """The plan for a person: what will run, and every problem found."""
    cv = plan["casa_version"]
    lines = [
        f"MOUS          {plan['mous_uid'] or '?'}   project {plan['project'] or '?'}",
        f"member        {plan['member_dir']}",
        f"CASA          {cv['version'] or '?'}" + (f" (pipeline {cv['pipeline_version']})" if cv["pipeline_version"] else "")
        + (f": {cv['decision']}" if cv.get("decision") else ""),
        f"calibration   {plan['calibration']['kind'] or '?'}: {plan['calibration']['reason'] or ''}",
        f"imaging       {plan['imaging']['kind'] or '?'}: {plan['imaging']['reason'] or ''}",
        f"split         {_split_line(plan['split'])}",
        f"PPR           {plan['ppr']['path'] or '-'} ({len(plan['ppr']['ebs'])} EBs)",
    ]
    if plan["split"].get("note"):
        lines.append(f"              note: {plan['split']['note']}")
    sfpi = plan.get("scriptforpi")
    if sfpi:
        lines.insert(3, f"scriptForPI   {sfpi['version']} (the delivery's): its rules decide below" if sfpi["version"]
                     else f"scriptForPI   version unknown: the rules of {sfpi['rules_of']} (the newest read) decide below")
    manual = plan.get("manual")
    if manual:
        lines.append(f"manual        {len(manual['runs'])} EB script(s), order {manual['order']['rule']}: "
                     f"{manual['order']['why']}"
                     + (f"; ephemerides linked in: {', '.join(manual['ephemerides'])}" if manual["ephemerides"] else ""))
        for n, r in enumerate(manual["runs"], 1):
            lines.append(f"  {n}. {r['eb']:<28} {r['script']}" + (" (single dish)" if r["kind"] == "single-dish" else ""))
    staged = plan.get("staged", True)
    for e in plan["raw"]["ebs"]:
        if e["state"] == "ok":
            detail = (f"{e['scans']} scans, {e['antennas']} antennas, {e['spws']} spws, "
                      f"{e['size_bytes'] / 1e6:.1f} MB")
        elif e["state"] == "to_stage":
            detail = (f"{_size(e['size_bytes'])} in the archive" if e["size_bytes"] is not None
                      else "size known once staged")
        else:
            detail = e["problem"] or ""
        lines.append(f"  raw {e['eb']:<28} {e['state'].replace('_', ' '):<8} {detail}")
    for name in plan["raw"]["extra"]:
        lines.append(f"  raw {name:<28} ignored (not in the PPR)")
    d = plan["disk"]
    to_stage = [e for e in plan["raw"]["ebs"] if e["state"] == "to_stage"]
    unsized = [e for e in to_stage if e["size_bytes"] is None]
    if to_stage and len(unsized) == len(to_stage):
        lines.append(f"disk          needs {d['rule']['formula']} (its size is known once staged); "
                     f"free {_size(d['free_bytes'])}")
    else:
        est = (" (the archive's sizes" + (f"; {len(unsized)} EB(s) unknown: more" if unsized else "") + ")"
               if d.get("estimated") else "")
        need = (f"needs {_size(d['needed_bytes'])} ({d['rule']['formula']})" if d["needed_bytes"] is not None
                else d["rule"]["formula"])
        lines.append(f"disk          raw {_size(d['raw_bytes'])}{est}, {need}, free {_size(d['free_bytes'])}")
    if d["rule"].get("renormalisation"):
        lines.append(f"              SPACESAVING limited to 1: {d['rule']['renormalisation']}")
    for pr in plan["problems"]:
        lines.append(f"{pr['severity'].upper():<13} {pr['path']}: {pr['message']}")
    if not plan["ok"]:
        lines.append("NOT READY: fix the errors above")
    elif not staged:
        there = len(plan["raw"]["ebs"]) - len(to_stage)
        lines.append(f"READY TO STAGE: {len(to_stage)} ASDM(s) to fetch"
                     + (f", {there} already in raw/" if there else ""))
    else:
        lines.append("OK")
    return "\n".join(lines)


# ------------------------------------------------------------ what only the pipeline restores right
# These deliveries need a pipeline CASA (hifa_restoredata does more than applycal):
# the native restore would give wrong data (or none), so `auto` routes them and
# `native` refuses them.

# hifa_restoredata converts the attribute to a value and renormalises when it is
# truthy: anything but an explicit false counts (never risk wrong amplitudes).
_FALSE = {"", "false", "0", "none"}
_HSD_CALL_RE = re.compile(r"^\s*hsd_\w+\s*\(", re.M)


def renorm_asdms(member_dir) -> list:
    """The ASDMs whose pipeline manifest carries `hifa_renorm` parameters to apply
    (Cycle 9-10: hifa_restoredata re-applies the amplitude renormalisation to
    CORRECTED_DATA; Cycle 11+ deliver a renorm caltable in calapply.txt instead)."""
    manifest = find_pipeline_manifest(member_dir)
    if manifest is None:
        return []
    return [asdm.get("name") for asdm in safexml.find_all(safexml.parse_file(manifest), "asdm")
            if any(str(r.get("apply", "")).strip().lower() not in _FALSE
                   for r in safexml.children(asdm, "hifa_renorm"))]


def single_dish_signs(member_dir) -> list:
    """Why this is a single-dish (total power) delivery, [] when it is not: a
    pipeline script calling hsd_ tasks (hsd_restoredata, hsd_calimage), a *jyperk*.csv."""
    member = Path(member_dir)
    signs = []
    for p in sorted((member / "script").glob("*.py")):
        if p.name.endswith(("casa_piperestorescript.py", "casa_pipescript.py")) and \
                _HSD_CALL_RE.search(p.read_bytes().decode("utf-8", "replace")):
            signs.append(f"{p.name} calls hsd_ tasks")
    for folder in ("calibration", "script"):
        signs += [f"{folder}/{p.name}" for p in sorted((member / folder).glob("*jyperk*.csv"))]
    return signs


def selfcal_files(member_dir) -> list:
    """calibration/*selfcal.json: scriptForPI re-applies the self-calibration (hif_selfcal)."""
    return [p.name for p in sorted((Path(member_dir) / "calibration").glob("*selfcal.json"))]


def native_restore_limits(member_dir) -> list:
    """Why the native restore would not restore this delivery right: one line per
    reason, [] when it can."""
    reasons = []
    renorm = renorm_asdms(member_dir)
    if renorm:
        reasons.append(f"the pipeline manifest carries amplitude renormalisation parameters (hifa_renorm) for "
                       f"{', '.join(renorm)}: hifa_restoredata re-applies them and the native restore would "
                       "give wrong amplitudes")
    sd = single_dish_signs(member_dir)
    if sd:
        reasons.append(f"a single-dish (total power) delivery ({', '.join(sd)}): hsd_restoredata, not an "
                       "interferometric restore")
    selfcal = selfcal_files(member_dir)
    if selfcal:
        reasons.append(f"calibration/{', '.join(selfcal)}: the self-calibration is re-applied by the pipeline "
                       "(hif_selfcal), which the native restore does not do")
    return reasons
