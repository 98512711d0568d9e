"""Wire format of the signed-in user's consents."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ConsentRead(BaseModel):
    client_id: str
    client_name: str
    scopes: list[str] = Field(description="The scopes granted to the client")
    granted_at: datetime = Field(description="When the latest of them was granted")


class ConsentList(BaseModel):
    items: list[ConsentRead]
