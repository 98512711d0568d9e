"""Wire formats of the MFA endpoints. Requests forbid unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TotpEnrolment(BaseModel):
    """A pending TOTP secret: add it to an authenticator app, then confirm with a code."""

    secret: str = Field(description="The base32 secret (160 bits), for manual entry")
    otpauth_uri: str = Field(description="otpauth://totp/ URI (issuer = service, label = "
                                         "email)")
    qr_svg: str = Field(description="The otpauth URI as a QR code, an SVG document")


class TotpCode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Room for a recovery code typed by mistake: it gets the same invalid_code answer.
    code: str = Field(min_length=1, max_length=64)


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(
        description="10 single-use codes; shown once, stored only as digests")


class DisableTotp(BaseModel):
    """Either a current TOTP ``code``, or the ``password`` and a ``recovery_code``."""

    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(default=None, min_length=1, max_length=64)
    password: str | None = Field(default=None, min_length=1, max_length=4096)
    # As typed: 16 characters, maybe grouped with dashes or spaces.
    recovery_code: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_proof(self) -> DisableTotp:
        with_code = self.code is not None
        with_recovery = self.password is not None or self.recovery_code is not None
        if with_code == with_recovery:
            raise ValueError("send either code, or password and recovery_code")
        if with_recovery and (self.password is None or self.recovery_code is None):
            raise ValueError("a recovery code needs the password too")
        return self
