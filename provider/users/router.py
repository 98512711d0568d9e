"""Self-service account endpoints for the bearer's own user."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from provider.deps import CurrentUser
from provider.oauth.schemas import OAuthErrorBody
from provider.users.schemas import UserRead

router = APIRouter(tags=["users"])

BEARER_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": OAuthErrorBody, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": OAuthErrorBody, "description": "The token lacks a required scope"},
}


@router.get("/users/me", response_model=UserRead, responses=BEARER_ERRORS)
async def read_me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)
