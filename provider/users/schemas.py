"""Wire formats for users. Requests forbid unknown fields (no mass assignment)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# Bounds that stop abuse before any work is done; the policy checks come after.
Email = Field(min_length=3, max_length=320)
Password = Field(min_length=1, max_length=4096)
Code = Field(min_length=1, max_length=16)
# Profile fields are flat and small: names such as "name", "given_name", "locale".
# Finite numbers only: JSON has no NaN or Infinity (PostgreSQL's json type refuses them).
ProfileValue = (Annotated[str, Field(max_length=1000)] | int
                | Annotated[float, Field(allow_inf_nan=False)] | bool | None)
Profile = dict[Annotated[str, Field(min_length=1, max_length=64)], ProfileValue]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Register(Request):
    email: str = Email
    password: str = Password
    username: str | None = Field(default=None, max_length=64)
    profile: Profile = Field(default_factory=dict, max_length=32)


class EmailOnly(Request):
    email: str = Email


class VerifyEmail(Request):
    email: str = Email
    code: str = Code


class ResetPassword(Request):
    email: str = Email
    code: str = Code
    new_password: str = Password


class ChangePassword(Request):
    current_password: str = Password
    new_password: str = Password


class UserUpdate(Request):
    """Username and profile change at once; a new email needs the password and a code."""

    username: str | None = Field(default=None, max_length=64)
    profile: Profile | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, min_length=3, max_length=320)
    password: str | None = Field(default=None, max_length=4096)


class UserUpdated(UserRead):
    pending_email: str | None = None
    """Set when a code was sent to a new address; the change waits for its confirmation."""


class ConfirmEmail(Request):
    code: str = Code


class DeleteAccount(Request):
    password: str = Password


class Accepted(BaseModel):
    status: str = "accepted"
    detail: str


class Done(BaseModel):
    status: str = "ok"
