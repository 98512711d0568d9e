"""Fixtures of the admin API suites: an admin with an admin-scoped token."""

from __future__ import annotations

import httpx
import pytest_asyncio

from tests.admin.helpers import Session, admin_login
from tests.factories import Factory


@pytest_asyncio.fixture(loop_scope="session")
async def admin(client: httpx.AsyncClient, factory: Factory) -> Session:
    return await admin_login(client, factory)
