"""Admin API for OAuth clients (scope `admin` of an admin user)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin", tags=["admin"])
