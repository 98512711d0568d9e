"""Wire formats for users. Requests forbid unknown fields (no mass assignment)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class UserRead(BaseModel):
    """A user as the API shows it: never a hash or a secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    username: str | None
    profile: dict[str, Any]
    is_verified: bool
    is_active: bool
    is_admin: bool
    mfa_enabled: bool = False
    created_at: datetime
    updated_at: datetime
