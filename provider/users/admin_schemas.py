"""Wire formats of the admin API for users. Requests forbid unknown fields (no mass assignment)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from provider.users.schemas import Profile, UserRead

# Strict: a JSON "false" string or 0 is not quietly taken for a boolean on these fields.
REQUEST = ConfigDict(extra="forbid", strict=True)
# The default of PATCH fields that may be omitted but not null. Pydantic never validates
# a default, so an omitted field just stays out of model_fields_set, while a null sent
# by a client fails the field's (non-nullable) type. Typed Any to fit every field.
UNSET: Any = None


class AdminUserCreate(BaseModel):
    """A user made by an admin: the password goes through the same policy as registration."""

    model_config = REQUEST

    email: str = Field(max_length=320)
    password: str
    username: str | None = None
    profile: Profile = Field(default_factory=dict, max_length=32)
    is_admin: bool = False
    is_verified: bool = False


class AdminUserUpdate(BaseModel):
    """PATCH: only the fields sent change; everything else is left as it is.

    An omitted field is not in ``model_fields_set``; an explicit ``null`` is a 422,
    except for ``username`` (null clears it). Read the changes with
    ``model_dump(exclude_unset=True)``, never attribute by attribute.
    """

    model_config = REQUEST

    email: str = Field(default=UNSET, max_length=320)
    username: str | None = None
    profile: Profile = Field(default=UNSET, max_length=32)
    is_active: bool = Field(
        default=UNSET, description="false disables the account and revokes its refresh tokens"
    )
    is_admin: bool = UNSET
    is_verified: bool = Field(
        default=UNSET,
        description="Changing the email without setting this marks the new address unverified",
    )


class UserPage(BaseModel):
    """One page of users, oldest first; pass ``next_cursor`` back as ``cursor`` for more."""

    items: list[UserRead]
    next_cursor: str | None
