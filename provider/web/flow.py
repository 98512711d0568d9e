"""The authorization code flow in the browser: authorization request, login (with the
second factor when the user has one), consent, and the code sent back to the client.

Each step re-validates the authorization request it carries (a hidden form field) with
provider.oauth.authorize, so nothing a browser sends back can widen it. The login goes
through the password grant's own credential check (the same throttles, the same
answer and time for an unknown user, a wrong password and a disabled account) and the
MFA service's second-factor check (mfa_tokens, the per-user throttle). After a login
the browser is sent back to the authorization endpoint without ``prompt=login`` and
``max_age``, which the login just satisfied (django-oauth-toolkit does the same).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from provider.audit.service import EventType, RequestContext
from provider.audit.service import Outcome as AuditOutcome
from provider.consents.service import grant as grant_consent
from provider.consents.service import granted_scopes
from provider.deps import request_context
from provider.mfa.service import (
    AMR,
    PASSWORD_AMR,
    CheckThrottled,
    SecondFactorLocked,
    WrongCode,
)
from provider.oauth.authorize import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    error_redirect,
    form_action_source,
    parse_request,
    redirect_to,
)
from provider.oauth.errors import (
    AccessDenied,
    ConsentRequired,
    InvalidGrant,
    InvalidScope,
    LoginRequired,
    SlowDown,
)
from provider.oauth.grants.password import (
    LOCKED,
    check_credentials,
    notify_second_factor,
    second_factor_locked,
)
from provider.oauth.scopes import ACCOUNT, ADMIN, EMAIL, OPENID, PROFILE, resolve_scope
from provider.oidc.logout import LogoutError, parse_logout
from provider.tokens.authorization_codes import CodeGrant, issue_code
from provider.tokens.revocation import revoke_session_of
from provider.users.service import store_rehash
from provider.web import pages
from provider.web import session as browser_sessions
from provider.web.session import BrowserLogin

if TYPE_CHECKING:
    from provider.services import Services

MAX_FORM_BYTES = 16 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
# The consent page's words for each scope.
SCOPE_WORDS = {
    OPENID: "Know who you are (your account's id)",
    PROFILE: "See your username and profile",
    EMAIL: "See your email address",
    ACCOUNT: ("Manage your account: change your profile, email and password, turn two-step "
              "verification on or off, and delete the account"),
    ADMIN: "Administer users and applications with your admin rights",
}
RESET_DOCS = "/docs#/accounts/forgot_password_auth_forgot_password_post"
EXPIRED_FORM = ("This form has expired or was not sent from this site. Go back, reload "
                "the page and try again.")
LOGIN_EXPIRED = "Your sign-in took too long. Enter your password again."
WRONG_CODE = "The code is wrong or was already used."


@dataclass
class Browser:
    """The browser's cookies as read from the request, and the ones to set."""

    services: Services
    session_token: str | None
    csrf_cookie: str | None
    session_cookie: str
    csrf_cookie_name: str
    set_cookies: list[tuple[str, str, int | None]] = field(default_factory=list)

    @classmethod
    def of(cls, request: Request, services: Services) -> Browser:
        session_name, csrf_name = browser_sessions.cookie_names(services.settings.issuer)
        return cls(services, request.cookies.get(session_name),
                   request.cookies.get(csrf_name), session_name, csrf_name)

    def csrf(self, purpose: str) -> str:
        """A form's token; a CSRF cookie is set first when the browser has none."""
        cookie = self.csrf_cookie or self.renew_csrf()
        return self.services.csrf.token(cookie, purpose)

    def renew_csrf(self) -> str:
        self.csrf_cookie = cookie = self.services.csrf.new_cookie()
        self.set_cookies.append((self.csrf_cookie_name, cookie, None))
        return cookie

    def check_csrf(self, purpose: str, submitted: str | None) -> bool:
        return self.services.csrf.check(self.csrf_cookie, purpose, submitted)

    def signed_in(self, token: str) -> None:
        """A new session cookie, and a new CSRF cookie: nothing from before the login
        (a planted value, a token of an old form) is worth anything after it."""
        self.session_token = token
        ttl = int(self.services.settings.browser_session_ttl.total_seconds())
        self.set_cookies.append((self.session_cookie, token, ttl))
        self.renew_csrf()

    def signed_out(self) -> None:
        self.session_token = None
        self.set_cookies.append((self.session_cookie, "", 0))

    def apply(self, response: Response) -> Response:
        secure = self.services.settings.issuer.startswith("https://")
        for name, value, max_age in self.set_cookies:
            if max_age == 0:
                response.delete_cookie(name, path="/", secure=secure, httponly=True,
                                       samesite="lax")
            else:
                response.set_cookie(name, value, max_age=max_age, path="/", secure=secure,
                                    httponly=True, samesite="lax")
        return response

    async def login(self) -> BrowserLogin | None:
        async with self.services.single.connect() as conn:
            return await browser_sessions.find_live(conn, self.session_token,
                                                    now=self.services.clock.now())


def _must_sign_in(request: AuthorizationRequest, login: BrowserLogin, now: datetime) -> bool:
    """The login is not good enough for this request: ``prompt=login``, or older than
    its ``max_age`` (OIDC Core §3.1.2.1)."""
    return "login" in request.prompt or (
        request.max_age is not None
        and (now - login.auth_time).total_seconds() > request.max_age)


def _consent_purpose(request_query: str) -> str:
    return f"consent\n{request_query}"


async def read_form(request: Request) -> dict[str, str] | None:
    """A page's form: url-encoded, not too large, no repeated field; None otherwise."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != FORM_TYPE:
        return None
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form or "\x00" in value:
            return None
        form[name] = value
    return form


def request_pairs(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, max_num_fields=64)
    except ValueError:
        return []


class Flow:
    """One browser request of the flow."""

    def __init__(self, services: Services, request: Request) -> None:
        self.services = services
        self.browser = Browser.of(request, services)
        self.context: RequestContext = request_context(request, services.settings)
        self.issuer = services.settings.issuer

    # --- answers ------------------------------------------------------------------------

    def page(self, template: str, *, status: int = 200, targets: Iterable[str] = (),
             headers: dict[str, str] | None = None, **context: object) -> Response:
        return self.browser.apply(pages.render(template, status=status, form_targets=targets,
                                               headers=headers, **context))

    def error_page(self, message: str, *, status: int = 400) -> Response:
        return self.browser.apply(pages.message("Sign-in problem", message, status=status))

    def redirect(self, url: str, *, status: int = 302) -> Response:
        return self.browser.apply(RedirectResponse(url, status_code=status))

    def to_client(self, error: RedirectError, *, status: int = 302) -> Response:
        return self.redirect(error_redirect(error, self.issuer), status=status)

    def login_page(self, request: AuthorizationRequest, *, error: str | None = None,
                   status: int = 200, username: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        settings = self.services.settings
        return self.page(
            "login.html", status=status, headers=headers,
            targets=[form_action_source(request.target.redirect_uri)],
            title="Sign in", error=error, action=pages.LOGIN_PATH,
            csrf=self.browser.csrf("login"), request_query=request.query(),
            client_name=request.client.name or request.client.client_id,
            username=username if username is not None else (request.login_hint or ""),
            reset_url=settings.password_reset_url or RESET_DOCS)

    def mfa_page(self, request: AuthorizationRequest, mfa_token: str, *,
                 error: str | None = None, status: int = 200,
                 headers: dict[str, str] | None = None) -> Response:
        return self.page(
            "mfa.html", status=status, headers=headers,
            targets=[form_action_source(request.target.redirect_uri)],
            title="Two-step verification", error=error, action=pages.MFA_PATH,
            csrf=self.browser.csrf("mfa"), request_query=request.query(),
            mfa_token=mfa_token)

    def consent_page(self, request: AuthorizationRequest, login: BrowserLogin,
                     scope: str) -> Response:
        switch = urlencode([*((n, v) for n, v in request.params if n != "prompt"),
                            ("prompt", "login")])
        return self.page(
            "consent.html", targets=[form_action_source(request.target.redirect_uri)],
            title="Allow access?", action=pages.CONSENT_PATH,
            csrf=self.browser.csrf(_consent_purpose(request.query())),
            request_query=request.query(),
            client_name=request.client.name or request.client.client_id,
            scopes=[SCOPE_WORDS.get(s, f"Use the scope “{s}”") for s in scope.split()]
            or ["Sign you in"],
            email=login.email, switch_url=f"{pages.AUTHORIZE_PATH}?{switch}")

    # --- the authorization endpoint -------------------------------------------------------

    async def authorize(self, pairs: list[tuple[str, str]]) -> Response:
        try:
            request = await parse_request(pairs, self.services.clients)
        except PageError as exc:
            return self.error_page(exc.message)
        except RedirectError as exc:
            return self.to_client(exc)
        return await self.proceed(request, await self.browser.login())

    async def proceed(self, request: AuthorizationRequest, login: BrowserLogin | None
                      ) -> Response:
        """Ask for what is missing (a login, a consent), or answer with a code."""
        now = self.services.clock.now()
        if login is None or _must_sign_in(request, login, now):
            if "none" in request.prompt:
                return self.to_client(RedirectError(request.target, LoginRequired()))
            return self.login_page(request)
        try:
            scope = resolve_scope(request.scope, request.client.scopes,
                                  may_admin=login.is_admin)
        except InvalidScope as exc:
            return self.to_client(RedirectError(request.target, exc))
        unassured = request.client_unassured
        if unassured or not request.client.is_first_party:
            granted: set[str] = set()
            if not unassured:  # an earlier answer says nothing of who asks now
                async with self.services.single.connect() as conn:
                    granted = await granted_scopes(conn, login.user_id,
                                                   request.client.client_id)
            # An empty scope (a client allowed none) still signs the user in to the
            # app: it is asked every time, never taken as covered by nothing.
            if "consent" in request.prompt or unassured or not scope \
                    or not set(scope.split()) <= granted:
                if "none" in request.prompt:
                    return self.to_client(RedirectError(request.target, ConsentRequired()))
                return self.consent_page(request, login, scope)
        return await self.issue(request, login, scope, now=now)

    async def issue(self, request: AuthorizationRequest, login: BrowserLogin, scope: str, *,
                    now: datetime, status: int = 302,
                    consented: bool = False) -> Response:
        grant = CodeGrant(
            client_id=request.client.client_id, user_id=login.user_id,
            redirect_uri=request.target.redirect_uri,
            redirect_uri_sent=request.redirect_uri_sent,
            code_challenge=request.code_challenge, scope=scope, nonce=request.nonce,
            auth_time=login.auth_time, amr=login.amr, session_epoch=login.session_epoch)
        async with self.services.engine.begin() as conn:
            if consented:
                await grant_consent(conn, user_id=login.user_id,
                                    client_id=request.client.client_id,
                                    scopes=scope.split(), now=now)
            code = await issue_code(conn, grant, now=now)
        if consented:
            self.services.audit.record(
                EventType.CONSENT_GRANTED, actor=str(login.user_id),
                subject_user_id=login.user_id, client_id=request.client.client_id,
                context=self.context, details={"scopes": scope.split()})
        return self.redirect(redirect_to(request.target, self.issuer, code=code),
                             status=status)

    # --- the forms ------------------------------------------------------------------------

    async def _form_request(self, form: dict[str, str] | None, purpose: str
                            ) -> tuple[AuthorizationRequest, dict[str, str]] | Response:
        """The form's authorization request, or the page that answers a bad form."""
        if form is None:
            return self.error_page("The form could not be read.")
        if purpose == "consent":
            # The consent form's token names the request the page showed: an answer
            # cannot be moved onto another request (another client, scope or prompt).
            purpose = _consent_purpose(form.get("request", ""))
        if not self.browser.check_csrf(purpose, form.get("csrf")):
            return self.error_page(EXPIRED_FORM, status=403)
        try:
            return await parse_request(request_pairs(form.get("request", "")),
                                       self.services.clients), form
        except PageError as exc:
            return self.error_page(exc.message)
        except RedirectError as exc:
            return self.to_client(exc, status=303)

    async def login(self, form: dict[str, str] | None) -> Response:
        parsed = await self._form_request(form, "login")
        if isinstance(parsed, Response):
            return parsed
        request, form = parsed
        username, password = form.get("username", "").strip(), form.get("password", "")
        if not username or not password:
            return self.login_page(request, status=400, username=username,
                                   error="Enter your email or username and your password.")
        services = self.services
        client_id = request.client.client_id
        try:
            user, rehash = await check_credentials(
                services, username=username, password=password, client_id=client_id,
                context=self.context, method="login_page")
        except SlowDown as exc:
            return self.login_page(
                request, status=429, username=username,
                headers={"Retry-After": str(exc.retry_after)},
                error=f"Too many attempts. Try again in {exc.retry_after} seconds.")
        except InvalidGrant as exc:
            return self.login_page(request, status=400, username=username,
                                   error=exc.error_description)
        now = services.clock.now()
        if user.has_mfa:
            async with services.engine.begin() as conn:
                if rehash is not None:
                    await store_rehash(conn, rehash, now=now)
                mfa_token = await services.mfa.issue_token(
                    conn, user_id=user.id, client_id=client_id, scope="",
                    session_epoch=user.session_epoch, now=now)
            services.audit.record(EventType.MFA_REQUIRED, actor=client_id,
                                  client_id=client_id, subject_user_id=user.id,
                                  context=self.context)
            return self.mfa_page(request, mfa_token)
        async with services.engine.begin() as conn:
            if rehash is not None:
                await store_rehash(conn, rehash, now=now)
            token = await browser_sessions.start(
                conn, user_id=user.id, session_epoch=user.session_epoch, amr=PASSWORD_AMR,
                now=now, ttl=services.settings.browser_session_ttl,
                previous_token=self.browser.session_token)
        return self._signed_in(request, token, user_id=user.id, client_id=client_id,
                               details={"method": "login_page"})

    def _signed_in(self, request: AuthorizationRequest, token: str, *, user_id: object,
                   client_id: str, details: dict[str, str]) -> Response:
        self.browser.signed_in(token)
        self.services.audit.record(EventType.LOGIN, actor=client_id, client_id=client_id,
                                   subject_user_id=user_id, context=self.context,
                                   details=details)
        return self.redirect(f"{pages.AUTHORIZE_PATH}?{request.query(drop_login=True)}",
                             status=303)

    async def second_factor(self, form: dict[str, str] | None) -> Response:
        parsed = await self._form_request(form, "mfa")
        if isinstance(parsed, Response):
            return parsed
        request, form = parsed
        services, mfa = self.services, self.services.mfa
        token, otp = form.get("mfa_token", ""), form.get("otp", "").strip()
        client_id = request.client.client_id
        now = services.clock.now()
        async with services.single.begin() as conn:
            reserved = await mfa.reserve_token_attempt(conn, token=token,
                                                       client_id=client_id, now=now)
        if reserved is None:
            return self.login_page(request, status=400, error=LOGIN_EXPIRED)
        if not otp:
            async with services.single.begin() as conn:
                await mfa.give_back_attempt(conn, reserved.id)
            return self.mfa_page(request, token, status=400, error="Enter the code.")
        try:
            locks = await mfa.reserve(reserved.user_id)
        except SecondFactorLocked:
            async with services.single.begin() as conn:
                await mfa.give_back_attempt(conn, reserved.id)
            self._failed_second_factor(client_id, reserved.user_id, "mfa_locked")
            return self.mfa_page(request, token, status=400, error=LOCKED)
        except CheckThrottled as exc:
            async with services.single.begin() as conn:
                await mfa.give_back_attempt(conn, reserved.id)
            return self.mfa_page(
                request, token, status=429, headers={"Retry-After": str(exc.retry_after)},
                error=f"Too many wrong codes. Try again in {exc.retry_after} seconds.")
        try:
            async with services.engine.begin() as conn:
                factor = await mfa.check(conn, user_id=reserved.user_id, code=otp, now=now)
                if factor is None:
                    raise WrongCode()
                if not await mfa.consume_token(conn, token=reserved, now=now):
                    raise _TokenGone()
                session_token = await browser_sessions.start(
                    conn, user_id=reserved.user_id, session_epoch=reserved.session_epoch,
                    amr=AMR[factor], now=now, ttl=services.settings.browser_session_ttl,
                    previous_token=self.browser.session_token)
        except WrongCode:
            # The per-user slot stays taken: a failure.
            self._failed_second_factor(client_id, reserved.user_id, "wrong_otp")
            if locks:
                await second_factor_locked(services, self.context, client_id,
                                           reserved.user_id)
            return self.mfa_page(request, token, status=400, error=WRONG_CODE)
        except _TokenGone:
            await mfa.unchecked(reserved.user_id)  # not a wrong code
            return self.login_page(request, status=400, error=LOGIN_EXPIRED)
        except BaseException:
            await mfa.unchecked(reserved.user_id)  # no verdict on the code
            raise
        await mfa.refund(reserved.user_id)
        await notify_second_factor(services, reserved.user_id, factor)
        return self._signed_in(request, session_token, user_id=reserved.user_id,
                               client_id=client_id,
                               details={"method": "login_page", "mfa": factor.value})

    def _failed_second_factor(self, client_id: str, user_id: uuid.UUID, reason: str
                              ) -> None:
        self.services.audit.record(EventType.LOGIN, actor=client_id,
                                   outcome=AuditOutcome.FAILURE, client_id=client_id,
                                   subject_user_id=user_id, context=self.context,
                                   details={"method": "login_page", "reason": reason})

    async def consent(self, form: dict[str, str] | None) -> Response:
        parsed = await self._form_request(form, "consent")
        if isinstance(parsed, Response):
            return parsed
        request, form = parsed
        login = await self.browser.login()
        if login is None or _must_sign_in(request, login, self.services.clock.now()):
            # Signed out meanwhile (or the session ended), or the login is now older than
            # the request's max_age: the authorization endpoint asks for it again.
            return self.redirect(f"{pages.AUTHORIZE_PATH}?{request.query()}", status=303)
        if form.get("decision") != "allow":
            return self.to_client(RedirectError(request.target, AccessDenied()), status=303)
        try:
            scope = resolve_scope(request.scope, request.client.scopes,
                                  may_admin=login.is_admin)
        except InvalidScope as exc:
            return self.to_client(RedirectError(request.target, exc), status=303)
        return await self.issue(request, login, scope, now=self.services.clock.now(),
                                status=303, consented=not request.client.is_first_party)

    # --- RP-initiated logout --------------------------------------------------------------

    async def logout(self, params: dict[str, str] | None, *, confirmed: bool,
                     is_post: bool) -> Response:
        if params is None:
            return self.error_page("The logout request is malformed (a parameter is "
                                   "repeated, or the form could not be read).")
        try:
            request = await parse_logout(params, jwt=self.services.jwt,
                                         clients=self.services.clients)
        except LogoutError as exc:
            return self.error_page(exc.message)
        login = await self.browser.login()
        status = 303 if is_post else 302
        if confirmed:
            if not self.browser.check_csrf("logout", params.get("csrf")):
                return self.error_page(EXPIRED_FORM, status=403)
        elif request.hint is None or login is None \
                or str(login.user_id) != request.hinted_user:
            # OIDC RP-Initiated Logout §2: the End-User MUST be asked when the hint does
            # not belong to the browser's signed-in user, no browser session included
            # (an ID token is no proof that its holder is that user: it may have leaked
            # from a log or an API call, and would end the app's session).
            return self.page(
                "logout.html", title="Sign out",
                targets=[form_action_source(request.post_logout_redirect_uri)]
                if request.post_logout_redirect_uri else (),
                action=pages.LOGOUT_PATH, csrf=self.browser.csrf("logout"),
                hidden=list(request.params), email=login.email if login else None)
        now = self.services.clock.now()
        # The ID token's app session ends only with its own user's browser session: an
        # ID token is no credential (whoever holds a leaked one could otherwise end it,
        # by confirming the page), and the app itself can revoke its tokens (RFC 7009).
        hinted = (request.hinted_session if login is not None
                  and str(login.user_id) == request.hinted_user else None)
        async with self.services.engine.begin() as conn:
            await browser_sessions.end(conn, self.browser.session_token, now=now)
            if hinted is not None and request.client is not None and request.hint:
                # The session the RP's ID token belongs to ends too: its refresh token.
                try:
                    user_id = uuid.UUID(str(request.hint["sub"]))
                except ValueError:
                    user_id = None
                if user_id is not None:
                    await revoke_session_of(conn, hinted, user_id=user_id,
                                            client_id=request.client.client_id, now=now)
        if login is not None or request.hint is not None:
            self.services.audit.record(
                EventType.LOGOUT, actor=str(login.user_id) if login else "browser",
                subject_user_id=login.user_id if login else None,
                client_id=request.client.client_id if request.client else None,
                context=self.context,
                details={"id_token_hint": request.hint is not None})
        self.browser.signed_out()
        url = request.return_url()
        if url is not None:
            return self.redirect(url, status=status)
        return self.browser.apply(pages.message("Signed out", "You are signed out."))


class _TokenGone(Exception):
    """The mfa_token was used (or its user's sessions ended) while the code was checked."""
