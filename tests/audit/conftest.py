"""The admin fixture of the admin suites."""

from tests.admin.conftest import admin

__all__ = ["admin"]
