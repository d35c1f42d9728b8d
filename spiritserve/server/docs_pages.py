"""The API docs pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served entirely from this server.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they stay blank in an air-gapped cluster. Here the
assets come from the `fastapi-offline` wheel (it ships swagger-ui-dist 5 and ReDoc 2's standalone bundle, refreshed
with each release) and are served under `/static/docs/vendor/`. FastAPI's `get_swagger_ui_html` starts Swagger UI
with an inline `<script>`, which a strict Content-Security-Policy forbids, so the two pages are small HTML files of
ours (static/docs/) whose bootstrap is a script file; pages and assets get the voice page's policy.

URLs in the pages are relative (`openapi.json`, `static/docs/...`), like the voice page's, so a path prefix added by
a proxy keeps working. Access follows `/openapi.json`: with API keys set the pages need a key unless the operator
lists them (and `/openapi.json`) in SPIRITSERVE_PUBLIC_PATHS; their assets sit under `/static/*`, public by default
like the voice page's.

ReDoc 2 needs three allowances, each as narrow as it goes (tests/server/test_docs_offline.py checks the page renders
with no CSP error and no request leaving the server):
- its styled-components `<style>` elements carry a per-request nonce (the page's policy admits that nonce);
- the one `<style>` its bundle injects while loading, before it can know a nonce (perfect-scrollbar's CSS, created
  empty, then filled), is admitted by the hashes of those two contents;
- its sidebar hard-codes the Redocly logo from cdn.redoc.ly: the bundle is served with that one URL replaced by an
  empty local image, so the browser never tries to leave. Its search (a `blob:` worker) is off.
"""

import functools
import os
import secrets
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import Mount, Router
from starlette.staticfiles import PathLike
from starlette.types import Scope

from spiritserve.server.web import CONTENT_SECURITY_POLICY, STATIC_DIR

DOCS_STATIC_DIR = STATIC_DIR / "docs"
VENDOR_DIR = Path(str(resources.files("fastapi_offline") / "static"))
ASSETS_PREFIX = "/static/docs"
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
# SHA-256 of the <style> contents ReDoc 2.5's bundle inserts at load: empty, then perfect-scrollbar's CSS.
REDOC_LOAD_STYLE_HASHES = (
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",
)
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui() -> HTMLResponse:
    """Swagger UI for this server's OpenAPI schema."""
    return _page("swagger-ui.html")


@router.get("/redoc", response_class=HTMLResponse)
async def redoc() -> HTMLResponse:
    """ReDoc for this server's OpenAPI schema."""
    nonce = secrets.token_urlsafe(16)
    styles = " ".join(("'self'", f"'nonce-{nonce}'", *REDOC_LOAD_STYLE_HASHES))
    policy = CONTENT_SECURITY_POLICY.replace("style-src 'self'", f"style-src {styles}")
    return _page("redoc.html", policy, nonce=nonce)


@router.get(f"{ASSETS_PREFIX}/redoc.standalone.js")
async def redoc_bundle() -> Response:
    """ReDoc's bundle from the wheel, its one remote image (the Redocly logo) replaced by an empty local one."""
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return Response(_redoc_bundle(), media_type="text/javascript", headers=headers)


@functools.cache
def _redoc_bundle() -> bytes:
    bundle = (VENDOR_DIR / "redoc.standalone.js").read_bytes()
    if bundle.count(REDOCLY_LOGO) != 1:
        raise RuntimeError(f"{VENDOR_DIR / 'redoc.standalone.js'}: expected {REDOCLY_LOGO!r} once; ReDoc changed")
    return bundle.replace(REDOCLY_LOGO, EMPTY_IMAGE)


def _page(name: str, policy: str = CONTENT_SECURITY_POLICY, **fields: str) -> HTMLResponse:
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": policy, "Cache-Control": "no-cache"}
    page = _read_page(name)
    for field, value in fields.items():
        page = page.replace("{" + field + "}", value)
    return HTMLResponse(page, headers=headers)


@functools.cache
def _read_page(name: str) -> str:
    return (DOCS_STATIC_DIR / name).read_text(encoding="utf-8")


class _AssetFiles(StaticFiles):
    """Static files sent with the pages' security headers."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_docs(app: FastAPI) -> None:
    """Add `/docs`, `/redoc` and their assets; call before mounting `/static`, which would shadow the assets.

    The app must be built with `docs_url=None, redoc_url=None` (FastAPI's CDN-backed pages off).
    """
    assert app.docs_url is None and app.redoc_url is None, "build the FastAPI app with docs_url=None, redoc_url=None"
    app.include_router(router)
    assets = Router(
        routes=[
            Mount("/vendor", app=_AssetFiles(directory=VENDOR_DIR)),
            Mount("/", app=_AssetFiles(directory=DOCS_STATIC_DIR)),
        ]
    )
    app.mount(ASSETS_PREFIX, assets, name="docs-static")
