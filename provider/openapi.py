"""render_openapi(): the OpenAPI document as YAML, from the app itself."""

from __future__ import annotations

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from provider.app import create_app
from provider.settings import Settings


class DocumentSettings(Settings):
    """Settings from their defaults and the arguments only: no environment, no .env, no
    secrets directory. The document must not depend on the machine it is rendered on
    (PROVIDER_ENV=production, say, would refuse the loopback issuer)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def render_openapi() -> str:
    app = create_app(DocumentSettings(env="development", issuer="http://127.0.0.1:8000"))
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=100)
