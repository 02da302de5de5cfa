"""The manifest page's signatures and findings, and the policy forms, in a real browser.

Debian's headless Chromium driven by Selenium (as in test_web_browser.py), against one
server process (auth on, so signing and scanning are on) whose store holds the scanning
tests' OSV records (real schema; one summary carries an HTML payload). ``acme/prod/app:1``
is the Alpine fixture image pushed over HTTP, so the server signs it (both kinds) and scans
it. The tests: the manifest page shows the signing key's fingerprint and the findings; an
admin edits retention and upstreams, a superuser the quota, through the pages, and the API
shows each change; a reader gets no forms and a 403 when posting anyway; a post without
the CSRF token is refused; every page fits a 390x844 phone screen, with visible focus and
labelled fields. Screenshots go to ``$CARGOHOLD_WEB_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests import scanning_support as fx
from tests.helpers import RegistryServer
from tests.helpers.registry_api import push_image
from tests.helpers.tenants import Credential, cargohold_cli, http, new_store, write_config
from tests.test_web_manifest_sections import PAYLOAD_RECORD
from tests.web_support import PAYLOAD

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0
API = "/api/v1/registries/acme/prod"
PHONE = (390, 844)
POST_WITHOUT_RIGHTS = """
const [url, fields, done] = arguments;
fetch(url, {method: "POST", body: new URLSearchParams(fields), redirect: "manual"})
  .then(r => done(r.status), e => done("ERR " + e));
"""


class Site:
    def __init__(self, server: RegistryServer, creds: dict[str, Credential], shots: Path):
        self.server = server
        self.creds = creds
        self.shots = shots
        self.digest = ""

    def api(self, path: str, who: str = "root") -> dict:
        reply = requests.get(self.server.url + path, auth=self.creds[who].auth, timeout=30)
        assert reply.status_code == 200, (path, reply.status_code, reply.text[:300])
        return reply.json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web-manage")
    seed = new_store(tmp)
    creds = {
        f"acme/prod:{role}": cred for role, cred in seed.tenant_with_roles("acme/prod").items()
    }
    seed.tenant_with_roles("globex/prod")
    creds["root"] = seed.user("root", superuser=True)
    records = fx.write_all_zip(tmp / "all.zip", [*fx.ALL_RECORDS, PAYLOAD_RECORD])
    cargohold_cli("vulndb", "import", str(records), storage=seed.storage)
    config = write_config(tmp / "config.toml", scanning={"interval": "1s"})
    shots = Path(os.environ.get("CARGOHOLD_WEB_SCREENSHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        built = Site(server, creds, shots)
        built.digest = push_image(
            server.url, "acme/prod/app", fx.alpine_image(), "1", session=http(creds["root"].auth)
        )
        yield built


@pytest.fixture(scope="module")
def browser(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: install chromium and chromium-driver (make test-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shot(site: Site, driver: webdriver.Chrome, name: str) -> None:
    driver.save_screenshot(str(site.shots / f"{name}.png"))


def full_shot(site: Site, driver: webdriver.Chrome, name: str, piece: int = 1400) -> None:
    """The whole page in pieces of *piece* pixels (``NAME-1.png``, ...), not only the screen,
    to look at a phone-width page top to bottom."""
    width, height = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight]"
    )
    for number, top in enumerate(range(0, min(height, 20000), piece), 1):
        clip = {"x": 0, "y": top, "width": width, "height": min(piece, height - top), "scale": 1}
        data = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )["data"]
        (site.shots / f"{name}-{number}.png").write_bytes(base64.b64decode(data))


def wait(driver: webdriver.Chrome) -> WebDriverWait:
    """A wait that looks again when the element it read went with the page: a form's
    answer replaces the page, and a ``.notice`` found just before is stale by the time
    its text is read (seen once in the full suite)."""
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def log_in(site: Site, driver: webdriver.Chrome, who: str) -> None:
    driver.delete_all_cookies()
    driver.get(site.server.url + "/ui/")
    cred = site.creds[who]
    driver.find_element(By.ID, "username").send_keys(cred.username)
    driver.find_element(By.ID, "password").send_keys(cred.secret)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(expected_conditions.presence_of_element_located((By.ID, "logout")))


def fill(driver: webdriver.Chrome, fields: dict[str, str]) -> None:
    for ident, value in fields.items():
        element = driver.find_element(By.ID, ident)
        element.clear()
        element.send_keys(value)


def submit(driver: webdriver.Chrome, button: str, message: str) -> None:
    driver.find_element(By.ID, button).click()
    wait(driver).until(lambda d: message in d.find_element(By.CSS_SELECTOR, ".notice").text)


def test_the_manifest_page_shows_the_signing_key_and_the_scan_findings(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:read")
    page = f"{site.server.url}/ui/r/acme/prod/manifests/{site.digest}/app"
    deadline = time.monotonic() + 90
    while True:  # signing and scanning run moments after the push
        browser.get(page)
        states = [
            e.get_attribute("data-state")
            for e in browser.find_elements(By.CSS_SELECTOR, ".sig-kind")
        ]
        status = browser.find_element(By.ID, "scan-status").text
        if (states == ["verified", "verified"] and status == "done") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert states == ["verified", "verified"] and status == "done"
    keys = {k["kind"]: k for k in site.api(f"{API}/signing-keys", "acme/prod:read")["keys"]}
    for kind, key_kind in (("cosign", "cosign"), ("simple", "gpg")):
        shown = browser.find_element(By.CSS_SELECTOR, f"#signatures-{kind} code.fingerprint")
        assert shown.text == keys[key_kind]["fingerprint"]
    ids = [
        row.get_attribute("data-id")
        for row in browser.find_elements(By.CSS_SELECTOR, ".findings tbody tr")
    ]
    assert set(ids) == {"ALPINE-CVE-2024-5535", "ALPINE-CVE-2025-26519", "ALPINE-CVE-2099-0001"}
    assert ids[0] == "ALPINE-CVE-2024-5535"  # critical first
    payload_row = browser.find_element(By.CSS_SELECTOR, 'tr[data-id="ALPINE-CVE-2099-0001"]')
    assert PAYLOAD in payload_row.text  # shown as text ...
    assert browser.execute_script("return window.__pwned === undefined")  # ... never run
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    critical = browser.find_element(By.CSS_SELECTOR, '#scan-counts [data-severity="critical"]')
    assert critical.text == "critical 1"
    browser.find_element(By.ID, "signatures").location_once_scrolled_into_view  # noqa: B018
    shot(site, browser, "manifest-signatures")
    browser.find_element(By.ID, "scan").location_once_scrolled_into_view  # noqa: B018
    shot(site, browser, "manifest-scan")


def test_an_admin_edits_retention_and_upstreams_and_the_api_shows_them(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:admin")
    browser.get(site.server.url + "/ui/r/acme/prod/settings")
    fill(browser, {"keep-last": "7", "older-than": "90d", "protected": "v*"})
    submit(browser, "save-retention", "Retention rules saved.")
    rules = site.api(f"{API}/retention", "acme/prod:admin")
    assert rules["keep_last"] == 7 and rules["delete_older_than"] == 90 * 86400
    assert rules["protected"] == ["v*"]
    assert browser.find_element(By.ID, "older-than").get_attribute("value") == "90d"
    fill(
        browser,
        {
            "upstream-name": "mirror",
            "upstream-url": "https://mirror.example.test",
            "upstream-username": "robot",
            "upstream-password": "hunter2-upstream",
        },
    )
    submit(browser, "add-upstream", "Upstream added.")
    assert "hunter2-upstream" not in browser.page_source
    assert browser.find_element(By.ID, "upstream-password").get_attribute("value") == ""
    [upstream] = site.api(f"{API}/upstreams", "acme/prod:admin")["upstreams"]
    assert upstream["name"] == "mirror" and upstream["has_credentials"] is True
    browser.execute_script("document.getElementById('retention-title').scrollIntoView()")
    shot(site, browser, "policies-admin")
    assert browser.find_elements(By.ID, "quota-form") == []  # quotas: superusers only


def test_a_superuser_sets_the_quota_through_the_page(site: Site, browser: webdriver.Chrome) -> None:
    log_in(site, browser, "root")
    browser.get(site.server.url + "/ui/r/acme/prod/settings")
    fill(browser, {"quota-bytes": "5GiB", "quota-images": "100"})
    submit(browser, "save-quota", "Quota saved")
    quota = site.api(f"{API}/quota")
    assert quota["max_bytes"] == 5 * 2**30 and quota["max_images"] == 100


def test_a_reader_gets_no_forms_and_a_forged_post_is_refused(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:read")
    for page in ("settings", "security"):
        browser.get(f"{site.server.url}/ui/r/acme/prod/{page}")
        assert browser.find_elements(By.CSS_SELECTOR, "main form") == [], page
    csrf = browser.find_element(By.CSS_SELECTOR, "header input[name=csrf]").get_attribute("value")
    url = f"{site.server.url}/ui/r/acme/prod/settings/retention"
    status = browser.execute_async_script(
        POST_WITHOUT_RIGHTS, url, {"csrf": csrf, "keep_last": "1"}
    )
    assert status == 403
    assert site.api(f"{API}/retention")["keep_last"] != 1


def test_a_post_without_the_csrf_token_is_refused(site: Site, browser: webdriver.Chrome) -> None:
    log_in(site, browser, "acme/prod:admin")
    browser.get(site.server.url + "/ui/r/acme/prod/security")
    url = f"{site.server.url}/ui/r/acme/prod/security/scan-policy"
    status = browser.execute_async_script(POST_WITHOUT_RIGHTS, url, {"block_severity": "low"})
    assert status == 403
    assert site.api(f"{API}/scan-policy")["block_severity"] is None


PHONE_PAGES = {
    "home": "/ui/",
    "registry": "/ui/r/acme/prod",
    "image": "/ui/r/acme/prod/images/app",
    "manifest": "/ui/r/acme/prod/manifests/{digest}/app",
    "policies": "/ui/r/acme/prod/settings",
    "security": "/ui/r/acme/prod/security",
    "members": "/ui/r/acme/prod/members",
    "tokens": "/ui/r/acme/prod/tokens",
    "owner": "/ui/o/acme",
    "account": "/ui/account",
    "admin": "/ui/admin",
}
UNLABELLED = """
return [...document.querySelectorAll("main input, main select, main textarea")]
  .filter(e => e.type !== "hidden" && e.labels.length === 0 && !e.getAttribute("aria-label"))
  .map(e => e.name || e.id);
"""


def test_every_page_fits_a_phone_with_labelled_fields_and_visible_focus(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "root")
    browser.set_window_size(*PHONE)
    try:
        for name, path in PHONE_PAGES.items():
            browser.get(site.server.url + path.format(digest=site.digest))
            assert browser.find_element(By.TAG_NAME, "h1").text, name
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, (name, overflow)
            assert browser.execute_script(UNLABELLED) == [], name
            full_shot(site, browser, f"phone-{name}")
        browser.get(site.server.url + "/ui/r/acme/prod/settings")
        field = browser.find_element(By.ID, "keep-last")
        browser.execute_script("arguments[0].scrollIntoView(); arguments[0].focus()", field)
        field.send_keys(Keys.TAB)
        focused = browser.switch_to.active_element
        assert focused.get_attribute("id") == "older-than"
        assert focused.value_of_css_property("outline-style") != "none"
        shot(site, browser, "phone-focus")
    finally:
        browser.set_window_size(1280, 1000)
