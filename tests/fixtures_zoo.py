"""The delivery zoo's deliveries made with real CASA, staged and calibrated once per session.

One synthesis serves many tests (fixtures_synth); the zoo's manual and polarisation styles are
made once here and shared by their own test modules and tests/test_zoo.py:

- `manual_delivery`   alma-regen synth --style manual, converted from `synth_delivery` (no CASA:
                      the same ASDMs and truth, the files of a manual-calibration package)
- `pol_delivery`      alma-regen synth --style polarisation --ebs 2 (about 25 s of CPU, 3 MB)
- `manual_staged`, `pol_staged`   each staged from serve-archive (HTTP) into a workdir of its
                      own: {"member": the member folder, "bytes": what staging brought, read
                      right after staging, for the byte-for-byte check against the delivery}
- `manual_calibrated` the manual engine on the staged copy: (delivery, member, summary)
- `manual_truth`      the true visibilities checked on it: {EB file name: truth_check rows}
- `native_pol`        the native restore of the staged polarisation copy: (member, summary)

A calibration runs on the staged copy, never on the delivery itself: the zoo's "staged, then
restored" is the tests' one restore of those bytes (tests/test_manual_calibration.py and
tests/test_polarisation.py check what it made).
"""
from pathlib import Path

import archive_builder as ab
import pytest
from fixtures_servers import start_archive_server, stop_archive_server
from fixtures_synth import truth_check

from alma_regen import naming


def stage_from_serve_archive(delivery: dict, workdir: Path) -> dict:
    """Stage a zoo delivery's archive from a serve-archive of its own, as `alma-regen stage` does."""
    from alma_regen.staging import HttpSource, member_path, stage_mous
    server = start_archive_server(delivery["archive_dir"])
    try:
        summary = stage_mous(delivery["mous_uid"], HttpSource(server.url), workdir,
                             ab.FAST)
    finally:
        stop_archive_server(server)
    member = member_path(workdir, delivery["mous_uid"])
    return {"member": member, "summary": summary, "bytes": ab.staged_member(member)}


@pytest.fixture(scope="session")
def manual_delivery(synth_delivery, tmp_path_factory):
    from alma_regen_dev.zoo.manual import convert
    return convert(synth_delivery, tmp_path_factory.mktemp("manual"))


@pytest.fixture(scope="session")
def pol_delivery(tmp_path_factory):
    from alma_regen_dev.zoo import polarisation
    return polarisation.build(tmp_path_factory.mktemp("synth-pol"), ebs=2, seed=1)


@pytest.fixture(scope="session")
def manual_staged(manual_delivery, tmp_path_factory):
    return stage_from_serve_archive(manual_delivery, tmp_path_factory.mktemp("manual-staged"))


@pytest.fixture(scope="session")
def pol_staged(pol_delivery, tmp_path_factory):
    return stage_from_serve_archive(pol_delivery, tmp_path_factory.mktemp("pol-staged"))


@pytest.fixture(scope="session")
def manual_calibrated(manual_delivery, manual_staged):
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    summary = calibration.calibrate(manual_staged["member"], Options())   # engine auto, SPACESAVING 1
    return manual_delivery, manual_staged["member"], summary


@pytest.fixture(scope="session")
def manual_truth(manual_calibrated, synth_delivery, tmp_path_factory):
    _, member, _ = manual_calibrated
    work = tmp_path_factory.mktemp("manual-truth")
    return {naming.uid_to_file(eb): truth_check(member / "calibrated" / f"{naming.uid_to_file(eb)}.ms.split.cal",
                                                synth_delivery, "DATA", work)["rows"]
            for eb in synth_delivery["ebs"]}


@pytest.fixture(scope="session")
def native_pol(pol_staged):
    from alma_regen import calibration
    from alma_regen.calibration import Options
    return pol_staged["member"], calibration.calibrate(pol_staged["member"], Options(engine="native"))
