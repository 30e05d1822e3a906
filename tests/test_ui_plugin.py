"""The AirflowPlugin's UI monitoring, against a real api-server and real DagRuns.

Reuses the Airflow of fixtures_airflow (one published run, one failed run): the
plugin loads in every component, the "Reprocessing" view lists both MOUSs from
Airflow's database and the manifests in S3 (with run history, search and state
filter), the operator extra links of the publish and image tasks point at the
published summary page and manifest as host-less paths that open from another
host name than api.base_url's, the view's links are built from the request, no
bulk campaign panel shows without a bulk run (its numbers: test_campaign), a
run skipped as already published shows as skipped with why and no CASA, and the
listener recorded per-step durations as StatsD timings.
"""
import json
from urllib.parse import quote

import pytest

from alma_regen.naming import uid_to_file
from alma_regen.airflow.ui import publish_run_id
from fixtures_airflow import MISSING_MOUS

pytestmark = [pytest.mark.slow, pytest.mark.casa, pytest.mark.timeout(1200)]


def test_plugin_loads_without_errors(alerting_airflow):
    af = alerting_airflow
    r = af.cluster.cli("plugins", "-o", "json")
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    p = plugins["alma_regen"]
    assert p["fastapi_apps"][0]["url_prefix"] == "/alma-regen"
    assert p["external_views"][0]["name"] == "Reprocessing"
    assert p["external_views"][0]["href"] == "/alma-regen/"
    assert "alma_regen.airflow.listeners" in json.dumps(p["listeners"])
    assert "Traceback" not in r.stderr and "Failed to import plugin" not in r.stderr, r.stderr[-2000:]
    # The api-server loaded it too, without import errors.
    served = {x["name"]: x for x in af.cluster.api("GET", "/plugins")["plugins"]}
    assert served["alma_regen"]["external_views"][0]["href"] == "/alma-regen/"
    assert af.cluster.api("GET", "/plugins/importErrors")["total_entries"] == 0


def test_reprocessing_view_lists_runs_and_products(alerting_airflow):
    af = alerting_airflow
    status, body = af.cluster.get("/alma-regen/api/mous")
    assert status == 200, body[:2000]
    rows = {r["mous_uid"]: r for r in json.loads(body)}
    assert set(rows) == {af.mous, MISSING_MOUS}

    ok = rows[af.mous]
    assert ok["state"] == ok["status"] == "success" and ok["run_id"] == af.late_run
    assert [h["run_id"] for h in ok["history"]] == [af.late_run]
    assert ok["casa_version"] and ok["casa_version"].startswith("6.")
    assert ok["calibration"] == "native"
    assert ok["duration_s"] > 0
    # A finished run is at no step (not at the teardown that frees the MOUS).
    assert ok["step"] is None and ok["last_step"] != "release_mous"
    assert ok["steps"]["restore_eb"]["instances"] == 2
    assert ok["steps"]["publish"]["states"] == {"success": 1} and ok["steps"]["publish"]["duration_s"] >= 0
    pub = ok["published"]
    assert pub["run"] == publish_run_id(af.late_run) == ok["published_run"]
    assert pub["fidelity_ok"] is True and pub["outputs"] > 0
    base = f"/alma-regen/products/{uid_to_file(af.mous)}/{pub['run']}"
    assert pub["summary_url"] == base + "/index.html" and pub["manifest_url"] == base + "/manifest.json"
    assert ok["run_url"] == f"/dags/alma_regenerate/runs/{quote(af.late_run, safe='')}"

    bad = rows[MISSING_MOUS]
    assert bad["state"] == "failed" and bad["step"] == "check_published" and bad["published"] is None
    # It stopped before calibrating: no CASA ran, so none is named.
    assert bad["casa_version"] is None

    status, page = af.cluster.get("/alma-regen/")
    assert status == 200
    text = page.decode()
    assert af.mous in text and MISSING_MOUS in text and pub["summary_url"] in text
    for hook in ('id="mous-runs"', 'id="search"', 'id="state-filter"', 'class="rerun ext"',
                 f'data-run-id="{af.late_run}"', 'class="products-summary ext"'):
        assert hook in text, hook
    # No alma_bulk_reprocess run in this Airflow: no campaign, on the page or in the API.
    assert 'id="campaign"' not in text
    assert af.cluster.get("/alma-regen/api/campaign") == (200, b"null")

    # The product links work: the summary page and the manifest, streamed from S3.
    status, summary = af.cluster.get(pub["summary_url"])
    assert status == 200 and af.mous.encode() in summary
    # The summary shows each image's preview with its alt text, and the preview is there.
    assert b'<img src="thumbnails/' in summary and b".preview.png" in summary and b'alt="Regenerated image' in summary
    png = summary.split(b'<img src="', 1)[1].split(b'"', 1)[0].decode()
    status, image = af.cluster.get(f"{base}/{png}")
    assert status == 200 and image[:8] == b"\x89PNG\r\n\x1a\n"
    status, manifest = af.cluster.get(pub["manifest_url"])
    assert status == 200 and json.loads(manifest)["mous_uid"] == af.mous
    assert af.cluster.get(f"/alma-regen/products/{uid_to_file(af.mous)}/no-such-run/index.html")[0] == 404
    assert af.cluster.get(f"/alma-regen/products/{uid_to_file(af.mous)}/x/..%2F..%2Fsecret")[0] in (400, 404)


def _other_host(af, path: str) -> tuple:
    """GET `path` on the api-server by the name `localhost`, where api.base_url says 127.0.0.1."""
    assert "127.0.0.1" in af.cluster.base_url
    return af.cluster.get(af.cluster.base_url.replace("127.0.0.1", "localhost") + path)


def test_extra_links_are_relative_and_work_from_another_host(alerting_airflow):
    af = alerting_airflow
    run = publish_run_id(af.late_run)
    expected = {"Products summary": f"/alma-regen/products/{uid_to_file(af.mous)}/{run}/index.html",
                "Products manifest": f"/alma-regen/products/{uid_to_file(af.mous)}/{run}/manifest.json"}
    for task in ("publish", "finish_imaging"):
        links = af.cluster.api("GET", f"/dags/alma_regenerate/dagRuns/{quote(af.late_run, safe='')}"
                                      f"/taskInstances/{task}/links")
        links = links.get("extra_links", links)
        assert links == expected, (task, links)
    status, body = _other_host(af, expected["Products manifest"])
    assert status == 200 and json.loads(body)["run"] == run
    status, body = _other_host(af, expected["Products summary"])
    assert status == 200 and af.mous.encode() in body


def test_view_links_are_built_from_the_request_not_base_url(alerting_airflow):
    import re

    af = alerting_airflow
    status, page = _other_host(af, "/alma-regen/")
    assert status == 200
    hrefs = re.findall(r'href="([^"]+)"', page.decode())
    assert hrefs and all(h.startswith("/") for h in hrefs), [h for h in hrefs if not h.startswith("/")]
    assert "127.0.0.1" not in page.decode() and "localhost" not in page.decode()
    for h in {h for h in hrefs if h.startswith("/alma-regen/products/")}:
        assert _other_host(af, h)[0] == 200, h
    # The run links go to Airflow's own pages for the run.
    runs = [h for h in hrefs if h.startswith("/dags/alma_regenerate/runs/")]
    assert f"/dags/alma_regenerate/runs/{quote(af.late_run, safe='')}" in runs


def test_search_and_state_filter(alerting_airflow):
    af = alerting_airflow
    status, body = af.cluster.get("/alma-regen/api/mous?state=failed")
    assert status == 200 and [r["mous_uid"] for r in json.loads(body)] == [MISSING_MOUS]
    status, body = af.cluster.get("/alma-regen/api/mous?q=" + quote(MISSING_MOUS.split("/")[3].lower()))
    assert [r["mous_uid"] for r in json.loads(body)] == [MISSING_MOUS]
    status, body = af.cluster.get("/alma-regen/api/mous?q=" + quote(af.late_run))
    assert [r["mous_uid"] for r in json.loads(body)] == [af.mous]
    status, page = af.cluster.get("/alma-regen/?state=failed")
    assert MISSING_MOUS in page.decode() and f'data-mous="{af.mous}"' not in page.decode()


def test_step_durations_are_metrics(alerting_airflow):
    lines = alerting_airflow.statsd.lines
    timings = [ln for ln in lines if ln.startswith("airflow.alma_regen.step_duration.alma_regenerate.")]
    tasks = {ln.split(":")[0].rsplit(".", 1)[1] for ln in timings}
    assert {"lock_mous", "stage_auxiliary", "restore_eb", "publish"} <= tasks, lines[-50:]
    assert all(ln.endswith("|ms") for ln in timings)


def test_view_requires_a_login(tmp_path):
    """With real authentication (simple auth manager, not all-admins), the view refuses an
    anonymous caller and answers a logged-in one; products are refused too."""
    import time
    import urllib.request

    from airflow_procs import AirflowCluster

    (tmp_path / "passwords.json").write_text(json.dumps({"ops": "s3cret-pw"}))
    cluster = AirflowCluster(tmp_path / "airflow", env={
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": tmp_path / "passwords.json"})
    with cluster:
        cluster.migrate()
        cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(cluster.port))
        end = time.monotonic() + 120
        while True:
            cluster.check_alive()
            try:
                if cluster.get("/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < end, cluster.diagnostics()
            time.sleep(0.5)
        assert cluster.get("/alma-regen/api/mous")[0] in (401, 403)
        assert cluster.get("/alma-regen/")[0] in (401, 403)
        assert cluster.get("/alma-regen/api/campaign")[0] in (401, 403)
        assert cluster.get("/alma-regen/products/uid___A001_X1_X2/r1/index.html")[0] in (401, 403)

        req = urllib.request.Request(cluster.base_url + "/auth/token", method="POST",
                                     data=json.dumps({"username": "ops", "password": "s3cret-pw"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["access_token"]
        req = urllib.request.Request(cluster.base_url + "/alma-regen/api/mous",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read()) == []
    assert cluster.all_stopped()


def test_a_run_skipped_as_published_shows_as_skipped_with_why(alerting_airflow):
    """Last in this module: a second run of the published MOUS (it is skipped at check_published)."""
    af = alerting_airflow
    again = af.cluster.trigger("alma_regenerate", {"mous_uid": af.mous})
    assert af.cluster.wait_run("alma_regenerate", again, timeout=300) == "success"
    status, body = af.cluster.get("/alma-regen/api/mous")
    row = next(r for r in json.loads(body) if r["mous_uid"] == af.mous)
    assert row["run_id"] == again and row["runs"] == 2
    assert row["status"] == "skipped" and "already published" in row["why"]
    assert publish_run_id(af.late_run) in row["why"], row["why"]
    # No CASA ran, no step ran after check_published: no version, no "0 s" steps.
    assert row["casa_version"] is None and row["calibration"] is None
    assert "check_published" not in row["steps"] and "restore_eb" not in row["steps"]
    assert all(s["duration_s"] is not None for s in row["steps"].values())
    assert row["step"] == "check_published"
    assert [h["run_id"] for h in row["history"]] == [again, af.late_run]
    assert row["history"][1]["status"] == "success" and row["history"][1]["casa_version"]
    status, body = af.cluster.get("/alma-regen/api/mous?state=skipped")
    assert [r["mous_uid"] for r in json.loads(body)] == [af.mous]
    status, page = af.cluster.get("/alma-regen/")
    text = page.decode()
    assert f'data-run-id="{again}" data-state="skipped"' in text and 'class="why"' in text
    assert 'class="history-toggle"' in text and f'data-run-id="{af.late_run}" data-state="success"' in text
