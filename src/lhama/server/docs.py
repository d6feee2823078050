"""The API docs page, offline: /docs (Swagger UI) loads its script and styles from the
``fastapi-offline`` package's files, served here, instead of FastAPI's default CDN links (a blank
page without a network). There is no /redoc: ReDoc's bundle fetches its logo from a CDN.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles

from lhama.errors import ConfigError

ASSETS_URL = "/docs-assets"


def docs_assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css and favicon.png,
    located without importing the package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the API docs pages need the 'fastapi-offline' package: pip install fastapi-offline")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI) -> None:
    """Serve /docs from local assets; ``app`` was made with docs_url=None, redoc_url=None."""
    app.mount(ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=oauth2_redirect,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect():
        return get_swagger_ui_oauth2_redirect_html()
