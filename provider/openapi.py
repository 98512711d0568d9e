"""render_openapi(): the OpenAPI document as YAML, from the app itself."""

from __future__ import annotations

import yaml

from provider.app import create_app
from provider.settings import Settings


def render_openapi() -> str:
    # Fixed settings: the document must not depend on the machine it is rendered on.
    app = create_app(Settings(_env_file=None, issuer="http://127.0.0.1:8000"))
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=100)
