"""A real headless browser (Debian's chromium driven by Selenium) against the demo's Airflow.

`demo_airflow`: Airflow started the way `alma-regen demo` starts it (`airflow
standalone` through `alma_regen_dev.demo.Airflow`, SQLite, the simple auth manager
with its generated admin password, `api.base_url` on `localhost`), with the
synthetic delivery served by serve-archive and the products going to SeaweedFS.
Nothing is triggered: the browser does that.

`browser`: chromium headless through /usr/bin/chromedriver, started with an
explicit Service so selenium-manager never looks for (or downloads) a driver.
Absent browser or driver: a skip saying so, a failure under CI=true.

Screenshots and page sources go to `test-artifacts/browser/` at the top of the
checkout (ignored by git), or to $ALMA_REGEN_TEST_ARTIFACTS/browser when set:
kept after the run for whoever looks at a failure (CI can upload the folder).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_procs import free_port
from needs import skip_or_fail


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags chromium opens connections on its own
# (component updates, sync, field trials) that this closed network refuses.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000")


def artifacts_dir() -> Path:
    base = Path(os.environ.get("ALMA_REGEN_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out = base / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class DemoAirflow:
    af: object            # alma_regen_dev.demo.Airflow
    port: int
    base_url: str         # api.base_url as configured (http://localhost:PORT)
    ui_url: str           # what the browser opens: another host name for the same server
    user: str
    password: str
    mous: str
    bucket: str
    products_url: str

    _token: str = ""

    def api_token(self, fresh: bool = False) -> str:
        import urllib.request
        if self._token and not fresh:
            return self._token
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/auth/token", method="POST",
                                     data=json.dumps({"username": self.user, "password": self.password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            self._token = json.loads(r.read())["access_token"]
        return self._token

    def api(self, path: str):
        """GET /api/v2<path> with the admin's token (a new token once on 401)."""
        import urllib.error
        import urllib.request
        for attempt in (0, 1):
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v2{path}",
                                         headers={"Authorization": f"Bearer {self.api_token(fresh=attempt > 0)}"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 401 or attempt:
                    raise


@contextmanager
def demo_airflow_stack(root: Path, synth: dict, s3):
    """The demo's set-up (alma_regen_dev.demo.run_demo up to its trigger) on a free port."""
    from alma_regen.config import settings
    from alma_regen_dev import demo
    from alma_regen_dev.serve_archive import ArchiveServer

    root = Path(root)
    archive = ArchiveServer(synth["archive_dir"], "127.0.0.1", 0)
    threading.Thread(target=archive.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    bucket = s3.bucket("browser")
    products = f"s3://{bucket}/regen"
    host, rh_port = archive.url.split("://", 1)[1].rstrip("/").split(":")
    aws = {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
           "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}
    port = free_port()
    af = demo.Airflow(root / "airflow", {
        "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps({"conn_type": "http", "host": host,
                                                         "port": int(rh_port), "schema": "http"}),
        "AIRFLOW_CONN_ALMA_PRODUCTS_S3": json.dumps(aws), "AIRFLOW_CONN_ALMA_ARCHIVE_S3": json.dumps(aws),
        "ALMA_REGEN_WORKDIR": str(root / "work"), "ALMA_REGEN_PRODUCTS_URL": products,
        # Free ports for the log servers: several test Airflows may run on this machine.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }, port)
    try:
        af.start()
        s = settings()
        af.cli("pools", "set", s.casa_pool, "2", "CASA processes at once (one per core)")
        af.cli("pools", "set", s.staging_pool, "4", "downloads at once")
        af.cli("dags", "unpause", demo.DAG_ID)
        base_url = af.env["AIRFLOW__API__BASE_URL"].rstrip("/")
        # The browser uses the other name of this machine than api.base_url's.
        other = "127.0.0.1" if "//localhost" in base_url else "localhost"
        password = af.password()
        if password.startswith("?"):
            raise RuntimeError(f"no generated admin password in {af.home}:\n"
                               + (af.home / "standalone.log").read_text(errors="replace")[-3000:])
        yield DemoAirflow(af, port, base_url, f"http://{other}:{port}", "admin", password,
                          synth["mous_uid"], bucket, products)
    finally:
        af.stop()
        archive.shutdown()
        archive.server_close()


@pytest.fixture(scope="module")
def demo_airflow(tmp_path_factory, synth_delivery, seaweedfs):
    with demo_airflow_stack(tmp_path_factory.mktemp("demo-airflow"), synth_delivery, seaweedfs) as d:
        yield d


class Browser:
    """A Selenium driver with the helpers the tests share: waits, screenshots, page sources."""

    def __init__(self, driver, out: Path, prefix: str = ""):
        self.driver, self.out, self.prefix = driver, out, prefix
        self.shots: list[Path] = []

    def wait(self, timeout: float = 30):
        from selenium.webdriver.support.ui import WebDriverWait
        return WebDriverWait(self.driver, timeout, poll_frequency=0.25)

    def shot(self, name: str) -> Path:
        """A PNG and the page source, named for the step."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.prefix}{name}")
        png = self.out / f"{safe}.png"
        self.driver.save_screenshot(str(png))
        (self.out / f"{safe}.html").write_text(self.driver.page_source)
        self.shots.append(png)
        return png

    def quit(self):
        self.driver.quit()


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        skip_or_fail(f"no browser for the browser tests: {', '.join(missing)} missing "
                     "(Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        skip_or_fail(f"selenium is not installed ({exc}): pip install -r requirements-test.txt")
    profile = tempfile.mkdtemp(prefix="alma-regen-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    out = artifacts_dir()
    for old in out.glob("*"):  # this run's pictures only
        if old.is_file():
            old.unlink()
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(out / "chromedriver.log")),
                                  options=opts)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a missing browser
        shutil.rmtree(profile, ignore_errors=True)
        skip_or_fail(f"chromium/chromedriver did not start: {str(exc).splitlines()[0]}")
    b = Browser(driver, out)
    try:
        yield b
    finally:
        b.quit()
        shutil.rmtree(profile, ignore_errors=True)

