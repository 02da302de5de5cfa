"""The website over plain HTTP: sessions, CSRF, headers, escaping, tenancy and the pages' content.

One server (auth on, file storage, a custom domain for ``acme/prod``) holds ``acme/prod``
and ``globex/prod`` (private, one user per role each), the public ``globex/open`` and a
superuser. ``acme/prod/app`` has a tag ``1`` whose labels, annotations, environment and
history carry HTML and script payloads, a referrer, and a cosign-style attachment tag.
The real-browser checks (clicks, copying, uploads, scripts not running) are in
test_web_browser.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import Image, RegistryServer, build_image, make_layer
from tests.helpers.registry_api import push_image
from tests.helpers.tenants import Credential, Seeder, http, new_store, push_referrer, write_config
from tests.web_support import DOMAIN, PAYLOAD, WebClient, hidden_fields, payload_image

TENANTS = ("acme/prod", "globex/prod")


@dataclass
class Site:
    server: RegistryServer
    seed: Seeder
    creds: dict[str, Credential] = field(default_factory=dict)
    image: Image | None = None
    referrer: str = ""

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, who: str | None = None) -> WebClient:
        client = WebClient(self.url)
        if who is not None:
            cred = self.creds[who]
            response = client.login(cred.username, cred.secret)
            assert response.status_code == 200, response.text[:500]
        return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web-pages")
    seed = new_store(tmp)
    creds: dict[str, Credential] = {}
    for tenant in TENANTS:
        for role, cred in seed.tenant_with_roles(tenant).items():
            creds[f"{tenant}:{role}"] = cred
    seed.registry("globex/open", public=True)
    creds["root"] = seed.user("root", superuser=True)
    creds["stranger"] = seed.user("stranger")
    config = write_config(
        tmp / "config.toml",
        server={"trusted_proxies": ["127.0.0.1/32"]},
        domains={DOMAIN: "acme/prod"},
    )
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        built = Site(server, seed, creds)
        root = http(creds["root"].auth)
        built.image = payload_image()
        for tenant in TENANTS:
            push_image(server.url, f"{tenant}/app", built.image, "1", session=root)
        built.referrer = push_referrer(server.url, "acme/prod/app", built.image, root)
        hexpart = built.image.digest.split(":", 1)[1]
        push_image(server.url, "acme/prod/app", built.image, f"sha256-{hexpart}.sig", session=root)
        push_image(
            server.url,
            "globex/open/tool",
            build_image([make_layer({"etc/tool": "tool\n"})]),
            "latest",
            session=root,
        )
        yield built


# -- sessions ----------------------------------------------------------------------------


def test_login_sets_an_httponly_samesite_lax_session_cookie(site: Site) -> None:
    client = WebClient(site.url)
    page = client.get("/ui/")
    token = hidden_fields(page.text)["login_token"]
    cred = site.creds["acme/prod:read"]
    response = client.session.post(
        site.url + "/ui/login",
        data={"login_token": token, "username": cred.username, "password": cred.secret},
        allow_redirects=False,
    )
    assert response.status_code == 303
    header = response.headers["Set-Cookie"]
    assert header.startswith("cargohold_session=")
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert "Secure" not in header  # plain HTTP: a Secure cookie would never come back


def test_session_cookie_is_secure_behind_a_trusted_https_proxy(site: Site) -> None:
    client = WebClient(site.url, headers={"X-Forwarded-Proto": "https"})
    page = client.get("/ui/")
    assert "Secure" in page.headers["Set-Cookie"]  # the login form's token cookie too
    token = hidden_fields(page.text)["login_token"]
    cred = site.creds["acme/prod:read"]
    response = client.session.post(
        site.url + "/ui/login",
        data={"login_token": token, "username": cred.username, "password": cred.secret},
        cookies={"cargohold_login": token},  # a Secure cookie: requests keeps it for HTTPS
        allow_redirects=False,
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_session_lets_the_visitor_see_its_registries(site: Site) -> None:
    client = site.client("acme/prod:read")
    home = client.get("/ui/")
    assert home.status_code == 200
    assert "acme/prod" in home.text and "globex/prod" not in home.text
    assert "globex/open" in home.text  # public: listed for everyone


def test_the_session_cookie_is_not_stored_in_clear(site: Site) -> None:
    client = site.client("acme/prod:read")
    cookie = client.session_cookie
    assert cookie
    store = Path(site.seed.storage.removeprefix("file://"))
    sessions = store / "cargohold" / "sessions"
    names = [p.name for p in sessions.iterdir()]
    assert names and cookie not in names
    assert all(cookie.encode() not in p.read_bytes() for p in sessions.iterdir())


def test_login_with_an_api_key_works(site: Site) -> None:
    key = site.seed.api_key("acme-prod-write")
    client = WebClient(site.url)
    response = client.login(key.username, key.secret)
    assert response.status_code == 200
    assert 'id="logout"' in response.text


def test_login_without_the_forms_token_is_refused(site: Site) -> None:
    cred = site.creds["acme/prod:read"]
    response = requests.post(
        site.url + "/ui/login", data={"username": cred.username, "password": cred.secret}
    )
    assert response.status_code == 403
    assert "cargohold_session" not in response.cookies


def test_failed_logins_count_towards_the_login_throttle(
    registry_factory: Any, tmp_path: Path
) -> None:
    seed = new_store(tmp_path)
    cred = seed.user("throttled")
    config = write_config(
        tmp_path / "config.toml",
        auth={"max_failures": 3, "slowdown_after": 100, "failure_window": 600},
    )
    server = registry_factory(storage_url=seed.storage, auth=True, config=config)
    client = WebClient(server.url)
    statuses = [client.login(cred.username, "wrong").status_code for _ in range(3)]
    assert statuses == [401] * 3
    # Locked out now, even with the right password, on the web and on the API alike.
    assert client.login(cred.username, cred.secret).status_code == 429
    assert requests.get(server.url + "/api/v1/user", auth=cred.auth).status_code == 429


def test_logout_ends_the_session_for_good(site: Site) -> None:
    client = site.client("acme/prod:read")
    cookie = client.session_cookie
    assert client.post("/ui/logout").status_code == 200
    replay = requests.get(site.url + "/ui/r/acme/prod", cookies={"cargohold_session": cookie})
    assert replay.status_code == 404
    assert (
        'id="login"' in requests.get(site.url + "/ui/", cookies={"cargohold_session": cookie}).text
    )


def test_a_password_change_ends_the_users_other_sessions(site: Site) -> None:
    cred = site.seed.user("changer")
    site.seed.member("acme/prod", "changer", "read")
    other = WebClient(site.url)
    assert other.login(cred.username, cred.secret).status_code == 200
    me = WebClient(site.url)
    me.login(cred.username, cred.secret)
    me.get("/ui/account")
    changed = me.post(
        "/ui/account/password",
        {
            "current_password": cred.secret,
            "new_password": "a-new-password-123",
            "confirm_password": "a-new-password-123",
        },
    )
    assert changed.status_code == 200 and "Password changed" in changed.text
    assert other.get("/ui/r/acme/prod").status_code == 404  # the old session is gone
    assert me.get("/ui/r/acme/prod").status_code == 200  # the changer goes on


# -- headers, static files, CSRF ----------------------------------------------------------


def test_pages_carry_a_strict_csp_and_the_other_security_headers(site: Site) -> None:
    response = requests.get(site.url + "/ui/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in response.text and " style=" not in response.text


def test_static_files_have_content_hashed_names_and_a_long_cache_life(site: Site) -> None:
    page = requests.get(site.url + "/ui/").text
    urls = re.findall(r'(?:href|src)="(/ui/static/[^"]+)"', page)
    assert {u.rsplit(".", 1)[-1] for u in urls} == {"css", "js"}
    for url in urls:
        assert re.fullmatch(r"/ui/static/site\.[0-9a-f]{12}\.(css|js)", url)
        response = requests.get(site.url + url)
        assert response.status_code == 200
        assert "max-age=31536000" in response.headers["Cache-Control"]
    assert requests.get(site.url + "/ui/static/site.css").status_code == 404


def test_a_form_post_without_the_csrf_token_is_refused_and_changes_nothing(site: Site) -> None:
    admin = site.client("acme/prod:admin")
    refused = admin.post(
        "/ui/r/acme/prod/members", {"user": "stranger", "role": "admin"}, csrf=False
    )
    assert refused.status_code == 403
    wrong = admin.session.post(
        site.url + "/ui/r/acme/prod/members",
        data={"user": "stranger", "role": "admin", "csrf": "0" * 64},
    )
    assert wrong.status_code == 403
    members = admin.get("/ui/r/acme/prod/members").text
    assert "stranger" not in members


def test_the_archives_api_takes_the_session_cookie_only_with_its_csrf_header(
    site: Site, tmp_path: Path
) -> None:
    from tests.helpers.images import write_docker_archive

    archive = tmp_path / "web.docker"
    write_docker_archive(archive, "web/upload:1", [{"etc/web": "uploaded\n"}])
    writer = site.client("acme/prod:write")
    url = site.url + "/api/v1/registries/acme/prod/archives"
    refused = writer.session.post(url, data=archive.read_bytes())
    assert refused.status_code == 403  # the cookie without its CSRF header is refused
    forged = writer.session.post(url, data=archive.read_bytes(), headers={"X-CSRF-Token": "f" * 64})
    assert forged.status_code == 403
    writer.get("/ui/r/acme/prod")
    accepted = writer.session.post(
        url, data=archive.read_bytes(), headers={"X-CSRF-Token": writer.csrf}
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["images"][0]["repository"] == "acme/prod/web/upload"


# -- escaping and content -----------------------------------------------------------------------


def test_image_controlled_text_is_escaped_on_the_manifest_page(site: Site) -> None:
    assert site.image is not None
    client = site.client("acme/prod:read")
    page = client.get(f"/ui/r/acme/prod/manifests/{site.image.digest}/app")
    assert page.status_code == 200
    assert PAYLOAD not in page.text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text
    assert (
        page.text.count("&lt;script&gt;") >= 6
    )  # labels (key, value), env, cmd, history, annotation


def test_a_search_query_is_reflected_escaped(site: Site) -> None:
    client = site.client("acme/prod:read")
    page = client.get("/ui/r/acme/prod", params={"q": PAYLOAD})
    assert PAYLOAD not in page.text and "&lt;script&gt;" in page.text


def test_the_image_page_lists_tags_but_not_attachments(site: Site) -> None:
    client = site.client("acme/prod:read")
    page = client.get("/ui/r/acme/prod/images/app").text
    tags = re.findall(r'<tr data-tag="([^"]+)">', page)
    assert tags == ["1"]
    assert "linux/amd64" in page


def test_the_manifest_page_shows_referrers_and_attachment_tags(site: Site) -> None:
    assert site.image is not None
    client = site.client("acme/prod:read")
    page = client.get(f"/ui/r/acme/prod/manifests/{site.image.digest}/app").text
    assert site.referrer in page
    assert f"sha256-{site.image.digest.split(':')[1]}.sig" in page
    for layer in site.image.layer_digests:
        assert layer in page


def test_the_pull_command_uses_the_registrys_custom_domain(site: Site) -> None:
    client = site.client("acme/prod:read")
    page = client.get("/ui/r/acme/prod/images/app").text
    assert f'data-copy="docker pull {DOMAIN}/app:1"' in page


def test_the_pull_command_uses_the_servers_host_without_a_custom_domain(site: Site) -> None:
    client = site.client("globex/prod:read")
    page = client.get("/ui/r/globex/prod/images/app").text
    host = site.url.removeprefix("http://")
    assert f'data-copy="docker pull {host}/globex/prod/app:1"' in page


def test_anonymous_visitors_see_the_login_form_and_public_registries_only(site: Site) -> None:
    page = requests.get(site.url + "/ui/").text
    assert 'id="login"' in page
    assert "globex/open" in page and "acme/prod" not in page and "globex/prod" not in page
    assert requests.get(site.url + "/ui/r/globex/open/images/tool").status_code == 200


def test_image_tags_sort_by_date_and_size_from_the_tag_index(site: Site) -> None:
    root = http(site.creds["root"].auth)
    small = build_image([make_layer({"a": "small\n"})])
    big = build_image([make_layer({"b": "big\n" * 20000})])
    push_image(site.url, "acme/prod/sorted", big, "a-big", session=root)
    time.sleep(0.01)
    push_image(site.url, "acme/prod/sorted", small, "b-small-newer", session=root)
    client = site.client("acme/prod:read")

    def order(query: str) -> list[str]:
        page = client.get("/ui/r/acme/prod/images/sorted" + query).text
        return re.findall(r'<tr data-tag="([^"]+)">', page)

    assert order("?sort=name&order=asc") == ["a-big", "b-small-newer"]
    assert order("?sort=date&order=desc") == ["b-small-newer", "a-big"]
    assert order("?sort=size&order=desc") == ["a-big", "b-small-newer"]
    assert order("?sort=size&order=asc") == ["b-small-newer", "a-big"]


# -- management through the website ---------------------------------------------------------


def test_an_admin_adds_and_removes_a_member(site: Site) -> None:
    admin = site.client("globex/prod:admin")
    admin.get("/ui/r/globex/prod/members")
    added = admin.post("/ui/r/globex/prod/members", {"user": "stranger", "role": "read"})
    assert added.status_code == 200 and "Member saved" in added.text
    assert "stranger" in added.text
    stranger = site.client("stranger")
    assert stranger.get("/ui/r/globex/prod").status_code == 200
    removed = admin.post("/ui/r/globex/prod/members/stranger/remove")
    assert "Member removed" in removed.text
    assert stranger.get("/ui/r/globex/prod").status_code == 404


def test_a_created_token_is_shown_once_and_pulls_until_revoked(site: Site) -> None:
    admin = site.client("globex/prod:admin")
    admin.get("/ui/r/globex/prod/tokens")
    created = admin.post("/ui/r/globex/prod/tokens", {"name": "ci"})
    assert created.status_code == 201
    secret = re.search(r'data-copy="(ch[a-z]*_[^"]+)"', created.text)
    assert secret is not None, created.text
    token = secret.group(1)
    pulled = requests.get(
        site.url + "/v2/globex/prod/app/manifests/1",
        auth=("globex/prod", token),
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert pulled.status_code == 200
    listing = admin.get("/ui/r/globex/prod/tokens").text
    assert token not in listing
    token_id = re.findall(r'<tr data-token="([^"]+)">', listing)
    assert token_id
    for found in token_id:
        admin.post(f"/ui/r/globex/prod/tokens/{found}/revoke")
    refused = requests.get(
        site.url + "/v2/globex/prod/app/manifests/1", auth=("globex/prod", token)
    )
    assert refused.status_code == 401


def test_a_reader_cannot_reach_the_admin_pages(site: Site) -> None:
    reader = site.client("acme/prod:read")
    assert reader.get("/ui/r/acme/prod/members").status_code == 403
    assert reader.get("/ui/r/acme/prod/tokens").status_code == 403
    reader.get("/ui/r/acme/prod")
    assert reader.post("/ui/r/acme/prod/visibility", {"visibility": "public"}).status_code == 403
    assert 'id="upload-form"' not in reader.get("/ui/r/acme/prod").text


# -- tenancy: a name the visitor cannot see is like one that does not exist -------------------

PAGES = (
    "/ui/r/{t}",
    "/ui/r/{t}/members",
    "/ui/r/{t}/tokens",
    "/ui/r/{t}/settings",
    "/ui/r/{t}/images/app",
    "/ui/r/{t}/manifests/{d}/app",
    "/ui/o/{o}",
)


def _visitors() -> list[str | None]:
    return [None, "stranger", *(f"globex/prod:{r}" for r in ("read", "write", "admin"))]


@pytest.mark.parametrize("who", _visitors(), ids=lambda w: w or "anonymous")
def test_another_tenants_pages_answer_like_missing_ones(site: Site, who: str | None) -> None:
    assert site.image is not None
    client = site.client(who)
    for page in PAGES:
        victim = client.get(page.format(t="acme/prod", o="acme", d=site.image.digest))
        missing = client.get(page.format(t="acme/nothing", o="nobody", d=site.image.digest))
        assert victim.status_code == missing.status_code == 404, page
        # The login link echoes the path asked for (the visitor's own input, as for a
        # missing name); nothing else may name the victim's content.
        victim_body = re.sub(r"next=[^\"]*", "next=", victim.text)
        missing_body = re.sub(r"next=[^\"]*", "next=", missing.text)
        assert "app" not in victim_body.split("<main", 1)[1].replace("/app", "")
        assert site.image.digest not in victim_body
        for name in ("acme/prod", "acme"):
            victim_text = victim_body.replace(name, "NAME")
            missing_text = missing_body.replace("acme/nothing", "NAME").replace("nobody", "NAME")
            if victim_text == missing_text:
                break
        else:
            pytest.fail(f"{page}: the answers differ")
    posted = client.post("/ui/r/acme/prod/members", {"user": "stranger", "role": "admin"})
    assert posted.status_code in (403, 404)


def test_the_website_needs_auth_enabled(registry_server: RegistryServer) -> None:
    response = requests.get(registry_server.url + "/ui/")
    assert response.status_code == 404
    assert "[auth] enabled = true" in response.text


def test_an_anonymous_visitor_is_offered_the_login_on_a_missing_page(site: Site) -> None:
    page = requests.get(site.url + "/ui/r/acme/prod/images/app").text
    assert 'href="/ui/?next=%2Fui%2Fr%2Facme%2Fprod%2Fimages%2Fapp"' in page


def test_a_superuser_creates_a_user_and_an_owner_and_deletes_them(site: Site) -> None:
    root = site.client("root")
    root.get("/ui/admin")
    created = root.post("/ui/admin/users", {"name": "made-on-web", "password": "pw-made-123"})
    assert "User created" in created.text and "made-on-web" in created.text
    assert WebClient(site.url).login("made-on-web", "pw-made-123").status_code == 200
    owner = root.post("/ui/admin/owners", {"name": "webowner", "kind": "org"})
    assert "Owner created" in owner.text
    registry = root.post("/ui/o/webowner/registries", {"name": "web", "visibility": "private"})
    assert registry.status_code == 200 and "webowner/web" in registry.text
    refused = root.post("/ui/admin/owners/webowner/delete")
    assert refused.status_code == 409  # it still holds a registry
    assert "Owner deleted" not in refused.text
    gone = root.post("/ui/admin/users/made-on-web/delete")
    assert "User deleted" in gone.text and "made-on-web" not in gone.text.split("<main", 1)[1]


def test_the_admin_page_is_missing_for_other_users(site: Site) -> None:
    reader = site.client("acme/prod:admin")
    assert reader.get("/ui/admin").status_code == 404
    reader.get("/ui/account")
    assert reader.post("/ui/admin/users", {"name": "x", "password": "y"}).status_code == 403


def test_a_user_creates_an_api_key_shown_once_and_revokes_it(site: Site) -> None:
    cred = site.seed.user("keyholder")
    client = WebClient(site.url)
    client.login(cred.username, cred.secret)
    client.get("/ui/account")
    created = client.post("/ui/account/api-keys", {"name": "laptop"})
    assert created.status_code == 201
    secret = re.search(r'data-copy="([^"]+)"', created.text)
    assert secret is not None
    key = secret.group(1)
    assert requests.get(site.url + "/api/v1/user", headers={"X-Api-Key": key}).status_code == 200
    listing = client.get("/ui/account").text
    assert key not in listing
    key_id = re.search(r'action="/ui/account/api-keys/([^/"]+)/revoke"', listing)
    assert key_id is not None
    revoked = client.post(f"/ui/account/api-keys/{key_id.group(1)}/revoke")
    assert "API key revoked" in revoked.text
    assert requests.get(site.url + "/api/v1/user", headers={"X-Api-Key": key}).status_code == 401


def test_a_session_opened_with_an_api_key_ends_when_the_key_is_revoked(site: Site) -> None:
    key = site.seed.api_key("acme-prod-read")
    client = WebClient(site.url)
    assert client.login(key.username, key.secret).status_code == 200
    assert client.get("/ui/r/acme/prod").status_code == 200
    site.seed.revoke_api_key(key.id)
    assert client.get("/ui/r/acme/prod").status_code == 404


def test_two_server_processes_share_sessions_and_logouts(
    registry_factory: Any, tmp_path: Path
) -> None:
    seed = new_store(tmp_path)
    cred = seed.user("roamer")
    seed.registry("acme/prod")
    seed.member("acme/prod", "roamer", "read")
    config = write_config(tmp_path / "config.toml")
    first = registry_factory(storage_url=seed.storage, auth=True, config=config)
    second = registry_factory(storage_url=seed.storage, auth=True, config=config)
    on_first = WebClient(first.url)
    assert on_first.login(cred.username, cred.secret).status_code == 200
    cookie = {"cargohold_session": on_first.session_cookie or ""}
    assert requests.get(second.url + "/ui/r/acme/prod", cookies=cookie).status_code == 200
    on_second = WebClient(second.url)
    on_second.session.cookies.set("cargohold_session", cookie["cargohold_session"])
    on_second.get("/ui/r/acme/prod")
    assert on_second.post("/ui/logout").status_code == 200
    assert requests.get(first.url + "/ui/r/acme/prod", cookies=cookie).status_code == 404
