"""The website in a real browser: Debian's headless Chromium driven by Selenium.

One browser and one server (auth on, a custom domain for ``acme/prod``) for the module.
``acme/prod/app:1`` carries HTML and script payloads in its labels, environment, history
and annotations; ``globex/prod/app:1`` is plain. The tests click through the pages as a
visitor would, copy pull commands from the clipboard, create and revoke a token and use
it with skopeo, add a member, upload a ``docker save`` archive through the file input
(progress bar to 100%, result table) and pull it back with skopeo, and log out.
Screenshots of every page go to ``$CARGOHOLD_WEB_SCREENSHOTS`` when set, else to the
test's temporary folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import RegistryServer, build_image, make_layer, skopeo
from tests.helpers.images import write_docker_archive
from tests.helpers.registry_api import push_image
from tests.helpers.tenants import Credential, http, new_store, write_config
from tests.web_support import DOMAIN, PAYLOAD, payload_image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0
RECORD_PROGRESS_TEXTS = """
window.__progressTexts = [];
new MutationObserver(() => {
  window.__progressTexts.push(document.getElementById("upload-text").textContent);
}).observe(document.getElementById("upload-text"), {childList: true, characterData: true, subtree: true});
"""


class Site:
    def __init__(self, server: RegistryServer, creds: dict[str, Credential], shots: Path):
        self.server = server
        self.creds = creds
        self.shots = shots
        self.digest = ""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web-browser")
    seed = new_store(tmp)
    creds: dict[str, Credential] = {}
    for tenant in ("acme/prod", "globex/prod"):
        for role, cred in seed.tenant_with_roles(tenant).items():
            creds[f"{tenant}:{role}"] = cred
    creds["root"] = seed.user("root", superuser=True)
    creds["newcomer"] = seed.user("newcomer")
    config = write_config(tmp / "config.toml", domains={DOMAIN: "acme/prod"})
    shots = Path(os.environ.get("CARGOHOLD_WEB_SCREENSHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        built = Site(server, creds, shots)
        root = http(creds["root"].auth)
        image = payload_image()
        built.digest = push_image(server.url, "acme/prod/app", image, "1", session=root)
        push_image(
            server.url, "acme/prod/app", build_image([make_layer({"v": "2\n"})]), "2", session=root
        )
        push_image(
            server.url,
            "globex/prod/app",
            build_image([make_layer({"g": "g\n"})]),
            "1",
            session=root,
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
        driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {
                "origin": site.server.url,
                "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
            },
        )
        yield driver
    finally:
        driver.quit()


def shot(site: Site, driver: webdriver.Chrome, name: str) -> None:
    driver.save_screenshot(str(site.shots / f"{name}.png"))


def wait(driver: webdriver.Chrome) -> WebDriverWait:
    return WebDriverWait(driver, WAIT)


def log_in(site: Site, driver: webdriver.Chrome, who: str) -> None:
    driver.delete_all_cookies()
    driver.get(site.server.url + "/ui/")
    cred = site.creds[who]
    driver.find_element(By.ID, "username").send_keys(cred.username)
    driver.find_element(By.ID, "password").send_keys(cred.secret)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(expected_conditions.presence_of_element_located((By.ID, "logout")))


def clipboard(driver: webdriver.Chrome) -> str:
    return driver.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('ERR ' + e));"
    )


def click_copy(driver: webdriver.Chrome, row: str) -> str:
    button = driver.find_element(By.CSS_SELECTOR, f"{row} button.copy")
    button.click()
    wait(driver).until(lambda d: d.find_element(By.ID, "copy-status").text.startswith("Copied"))
    return clipboard(driver)


def test_a_visitor_logs_in_and_browses_owner_registry_image_and_manifest(
    site: Site, browser: webdriver.Chrome
) -> None:
    browser.get(site.server.url + "/ui/")
    shot(site, browser, "login")
    log_in(site, browser, "acme/prod:admin")
    shot(site, browser, "home")
    browser.find_element(By.LINK_TEXT, "acme/prod").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "images")))
    shot(site, browser, "registry")
    browser.find_element(By.LINK_TEXT, "app").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "tags")))
    tags = [
        row.get_attribute("data-tag")
        for row in browser.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
    ]
    assert tags == ["1", "2"]
    shot(site, browser, "image")
    browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="1"] a').click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "layers")))
    assert site.digest in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.ID, "manifest-tags").text == "1"
    shot(site, browser, "manifest")


def test_the_copied_pull_command_names_the_custom_domain(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:read")
    browser.get(site.server.url + "/ui/r/acme/prod/images/app")
    assert click_copy(browser, 'tr[data-tag="1"]') == f"docker pull {DOMAIN}/app:1"


def test_the_copied_pull_command_names_the_server_without_a_custom_domain(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "globex/prod:read")
    browser.get(site.server.url + "/ui/r/globex/prod/images/app")
    copied = click_copy(browser, 'tr[data-tag="1"]')
    assert copied == f"docker pull {site.server.host}/globex/prod/app:1"


def test_payloads_in_labels_and_annotations_render_as_text_and_never_run(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:read")
    browser.get(f"{site.server.url}/ui/r/acme/prod/manifests/{site.digest}/app")
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "labels")))
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main script") == []
    labels = browser.find_element(By.ID, "labels").text
    annotations = browser.find_element(By.ID, "annotations").text
    history = browser.find_element(By.ID, "history").text
    assert PAYLOAD in labels and PAYLOAD in annotations and PAYLOAD in history
    shot(site, browser, "payloads")


def test_an_admin_creates_a_token_that_pulls_with_skopeo_until_revoked(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "globex/prod:admin")
    browser.get(site.server.url + "/ui/r/globex/prod/tokens")
    browser.find_element(By.ID, "token-name").send_keys("browser-ci")
    browser.find_element(By.ID, "create-token").click()
    secret_box = wait(browser).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#token-secret code"))
    )
    secret = secret_box.text
    shot(site, browser, "token-created")
    assert click_copy(browser, "#token-secret") == secret
    image = f"docker://{site.server.host}/globex/prod/app:1"
    creds = f"--creds=globex/prod:{secret}"
    skopeo("inspect", "--tls-verify=false", creds, image)
    browser.get(site.server.url + "/ui/r/globex/prod/tokens")
    row = browser.find_element(By.XPATH, "//tr[td[1][text()='browser-ci']]")
    row.find_element(By.CSS_SELECTOR, "button.revoke").click()
    wait(browser).until(expected_conditions.alert_is_present()).accept()
    wait(browser).until(lambda d: "Token revoked" in d.page_source)
    assert (
        browser.find_element(By.XPATH, "//tr[td[1][text()='browser-ci']]/td[@class='state']").text
        == "revoked"
    )
    refused = skopeo("inspect", "--tls-verify=false", creds, image, check=False)
    assert refused.returncode != 0
    assert re.search(r"unauthorized|authentication required|401", refused.stderr, re.I)


def test_an_admin_adds_a_member_who_then_sees_the_registry(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:admin")
    browser.get(site.server.url + "/ui/r/acme/prod/members")
    browser.find_element(By.ID, "member-user").send_keys("newcomer")
    browser.find_element(By.CSS_SELECTOR, "#member-role option[value='write']").click()
    browser.find_element(By.ID, "add-member").click()
    wait(browser).until(lambda d: "Member saved" in d.page_source)
    rows = browser.find_element(By.ID, "members").text
    assert "newcomer write" in rows
    shot(site, browser, "members")
    newcomer = site.creds["newcomer"]
    assert (
        requests.get(
            site.server.url + "/v2/acme/prod/app/tags/list", auth=newcomer.auth
        ).status_code
        == 200
    )


def test_an_uploaded_docker_save_archive_shows_progress_and_pulls_with_skopeo(
    site: Site, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    archive = tmp_path / "upload.docker"
    write_docker_archive(
        archive,
        "uploaded/app:7",
        [{"etc/big": os.urandom(3 << 20).hex()}],  # ~6 MB of layer
    )
    log_in(site, browser, "acme/prod:write")
    browser.get(site.server.url + "/ui/r/acme/prod")
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    browser.execute_script(RECORD_PROGRESS_TEXTS)
    browser.find_element(By.ID, "upload-button").click()
    try:
        wait(browser).until(
            lambda d: d.find_element(By.ID, "upload-bar").get_attribute("value") == "100"
        )
        wait(browser).until(
            expected_conditions.visibility_of_element_located((By.ID, "upload-result"))
        )
    except TimeoutException:
        error = browser.find_element(By.ID, "upload-error").text
        pytest.fail(f"the upload did not finish: {error!r}")
    browser.execute_script(
        "document.getElementById('upload-title').scrollIntoView({block: 'start'})"
    )
    shot(site, browser, "upload")
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#upload-result td")]
    assert cells[0] == "acme/prod/uploaded/app" and cells[1] == "7"
    assert cells[2].startswith("sha256:")
    assert browser.find_element(By.ID, "upload-text").text.startswith("Done")
    texts = browser.execute_script("return window.__progressTexts")
    assert any(re.fullmatch(r"\S+ \S+ of \S+ MB · \S+ \S+/s · .+ left", t) for t in texts), texts
    writer = site.creds["acme/prod:write"]
    inspected = skopeo(
        "inspect",
        "--tls-verify=false",
        f"--creds={writer.username}:{writer.secret}",
        f"docker://{site.server.host}/acme/prod/uploaded/app:7",
    )
    assert cells[2] in inspected.stdout


def test_dates_are_local_with_utc_on_hover(site: Site, browser: webdriver.Chrome) -> None:
    log_in(site, browser, "acme/prod:read")
    browser.get(site.server.url + "/ui/r/acme/prod/images/app")
    moment = browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="1"] time')
    assert moment.get_attribute("title").endswith(" UTC")
    assert not moment.text.endswith(" UTC")  # rewritten in the browser's locale


def test_pages_are_keyboard_reachable_and_fit_a_phone(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:admin")
    browser.get(f"{site.server.url}/ui/r/acme/prod/manifests/{site.digest}/app")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("class") == "skip"
    assert focused.value_of_css_property("outline-style") != "none"
    browser.set_window_size(390, 844)
    try:
        for path in ("/ui/", "/ui/r/acme/prod", "/ui/r/acme/prod/images/app"):
            browser.get(site.server.url + path)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, path
        shot(site, browser, "phone-registry")
    finally:
        browser.set_window_size(1280, 1000)


def test_after_logout_the_session_cookie_no_longer_works(
    site: Site, browser: webdriver.Chrome
) -> None:
    log_in(site, browser, "acme/prod:read")
    cookie = browser.get_cookie("cargohold_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    browser.find_element(By.ID, "logout").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "login")))
    replay = requests.get(
        site.server.url + "/ui/r/acme/prod", cookies={"cargohold_session": cookie["value"]}
    )
    assert replay.status_code == 404


def test_a_broken_archive_is_explained_in_plain_words(
    site: Site, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    junk = tmp_path / "not-an-archive.docker"
    junk.write_bytes(b"this is not a tar file\n" * 100)
    log_in(site, browser, "acme/prod:write")
    browser.get(site.server.url + "/ui/r/acme/prod")
    browser.find_element(By.ID, "archive").send_keys(str(junk))
    browser.find_element(By.ID, "upload-button").click()
    error = wait(browser).until(
        expected_conditions.visibility_of_element_located((By.ID, "upload-error"))
    )
    assert error.text.startswith("The upload failed: ")
    assert "tar" in error.text or "archive" in error.text
    assert not browser.find_element(By.ID, "upload-result").is_displayed()
