"""`/docs` (Swagger UI) and `/redoc` (ReDoc) work with no network: every asset comes from this server.

In a real headless Chromium (Debian's, through Playwright; see conftest.py) against the shared real server, with
every request to another host aborted and recorded: both pages render this server's operations, nothing tried to
leave, and the strict Content-Security-Policy reported no violation. Plain HTTP checks cover the pages' and the
assets' content types and headers, and who may fetch them without a key.
"""

import re
from urllib.parse import urlsplit

import pytest

from spiritserve.server.admission import ApiKeys
from spiritserve.settings import Settings

RENDER_TIMEOUT_MS = 30_000
ASSETS = {
    "/static/docs/vendor/swagger-ui-bundle.js": "javascript",
    "/static/docs/vendor/swagger-ui.css": "text/css",
    "/static/docs/vendor/favicon.png": "image/png",
    "/static/docs/swagger-ui-init.js": "javascript",
    "/static/docs/redoc.standalone.js": "javascript",
    "/static/docs/redoc-init.js": "javascript",
    "/static/docs/redoc.css": "text/css",
}
# Records what the policy refused, whether or not the browser also logs it to the console.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) =>
  window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`));
"""


def test_the_pages_are_served_with_a_strict_policy(client):
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self';" in policy, policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r'(src|href)="(https?:)?//', page.text), page.text  # relative URLs only
        assert "<script>" not in page.text  # no inline script: each bootstrap is a file


def test_redoc_styles_are_admitted_by_a_fresh_nonce(client):
    nonces = []
    for _ in range(2):
        page = client.get("/redoc")
        (nonce,) = re.findall(r'nonce="([^"]+)"', page.text)
        assert f"'nonce-{nonce}'" in page.headers["content-security-policy"]
        nonces.append(nonce)
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 16


def test_the_assets_come_from_here_with_their_types_and_policy(client):
    for path, kind in ASSETS.items():
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"], path
        assert "default-src 'self'" in response.headers["content-security-policy"], path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert b"cdn.redoc.ly" not in client.get("/static/docs/redoc.standalone.js").content
    assert client.get("/static/docs/vendor/missing.js").status_code == 404
    assert client.get("/static/docs/../docs_pages.py").status_code == 404
    assert client.get("/static/app.js").status_code == 200  # the voice page's files still served beside them
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths) and not any(path.startswith("/static") for path in paths)


def test_with_api_keys_the_pages_follow_openapi_json_and_their_assets_stay_public():
    api_keys = ApiKeys(["key"], Settings.model_fields["public_paths"].default)
    assert not api_keys.is_public("/openapi.json")
    assert not api_keys.is_public("/docs") and not api_keys.is_public("/redoc")
    assert all(api_keys.is_public(path) for path in ASSETS)


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        # Swagger UI's block for the operation, with its method and path.
        ("/docs", ".opblock-post .opblock-summary-path[data-path='/v1/generate']"),
        # ReDoc's operation heading and its right-panel endpoint.
        ("/redoc", "[data-section-id='operation/generate_v1_generate_post'] h2"),
    ],
)
def test_the_page_renders_the_operations_with_no_network(browser, server_url, path, rendered):
    server = urlsplit(server_url).netloc
    page = browser.new_page()
    requests, left, console_errors = [], [], []

    def only_this_server(route, request):
        if urlsplit(request.url).netloc == server or request.url.startswith(("data:", "blob:")):
            requests.append(request.url)
            route.continue_()
        else:
            left.append(request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    page.goto(f"{server_url}{path}")
    page.wait_for_selector(rendered, state="visible", timeout=RENDER_TIMEOUT_MS)
    page.wait_for_load_state("networkidle")

    assert not left, f"requests that tried to leave the server: {left}"
    assert f"{server_url}/openapi.json" in requests, requests
    violations = page.evaluate("() => window.cspViolations")
    assert not violations and not console_errors, (violations, console_errors)
    assert "/v1/generate" in page.inner_text("body")
    page.close()
