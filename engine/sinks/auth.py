"""How an HTTP sink proves who it is: none, bearer, basic, OAuth2 client credentials with a
client secret, or with a signed JWT client assertion (SMART Backend Services).

Config models and runtime strategies live together, one pair per scheme. The config
models load without any HTTP or crypto library (registering the `fhir` sink and validating
configs that do not use it stay cheap): httpx, PyJWT and cryptography are imported where
a strategy first needs them, the last two only for `jwt_assertion`. A strategy
hands out request headers; token-based ones cache the access token and fetch a new one
`refresh_margin_s` before it expires, so a request never leaves with a token about to
lapse. After a 401 the sink calls `invalidate()` and retries once with a fresh token.

Failures to get a token say nothing about the message being delivered, so they are
`TransientError`s: the message waits and is retried while an operator fixes the
credentials. Error texts name the scheme, the HTTP status and the OAuth2 error code
(RFC 6749 §5.2), never a secret, a token or the server's free-text description.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import secrets
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Self
from urllib.parse import quote_plus, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.config.models import SecretRef
from engine.types import ConfigError, TransientError

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

#: SMART Backend Services: the client assertion type (RFC 7523 §2.2).
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART Backend Services: "exp ... no more than five minutes in the future".
MAX_ASSERTION_LIFETIME_S = 300
#: Token lifetime assumed when the token response has no `expires_in` (RFC 6749 §5.1 makes it optional).
DEFAULT_TOKEN_LIFETIME_S = 300.0
#: RFC 6749 §5.2 error codes: a fixed vocabulary, safe to repeat in an error text.
_OAUTH_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope",
})
#: Token endpoint statuses worth retrying soon (the same rule as the FHIR endpoint).
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class AuthUnavailableError(TransientError):
    """No usable credentials right now (token endpoint down or refusing). Not the message's fault."""


def check_http_url(value: str, *, allow_plain_http: bool, what: str) -> str:
    """An absolute http(s) URL without query or fragment; plain http only to loopback unless allowed.

    Plain HTTP would carry PHI and credentials in clear text (HIPAA §164.312(e)).
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not carry a query or fragment")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials; use `auth:`")
    if parts.scheme == "http" and not allow_plain_http and not _is_loopback(parts.hostname):
        raise ValueError(f"{what}: plain http:// is allowed only to loopback; use https:// "
                         "or set allow_plain_http: true (data and credentials travel unencrypted)")
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- config models


class _AuthModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NoAuthConfig(_AuthModel):
    """No Authorization header (a server on a trusted network, or a test server)."""

    type: Literal["none"] = "none"


class BearerAuthConfig(_AuthModel):
    """A static bearer token (RFC 6750), read by reference on each (re)start."""

    type: Literal["bearer"]
    token: SecretRef
    """The token: ${ENV}, {env: NAME} or {file: path}."""


class BasicAuthConfig(_AuthModel):
    """HTTP Basic (RFC 7617); use only over https."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretRef


class _TokenEndpointConfig(_AuthModel):
    token_url: str
    """OAuth2 token endpoint, e.g. https://auth.example.org/oauth2/token."""
    client_id: str = Field(min_length=1)
    scope: str | None = None
    """Space-separated scopes to request, e.g. 'system/*.cruds'; omit for the server's default."""
    refresh_margin_s: float = Field(default=60.0, ge=0, le=3600)
    """Fetch a new token this long before the current one expires."""
    allow_plain_http: bool = False
    """Allow an http:// token_url to a non-loopback host (credentials travel unencrypted)."""

    @model_validator(mode="after")
    def _check_token_url(self) -> Self:
        check_http_url(self.token_url, allow_plain_http=self.allow_plain_http, what="token_url")
        return self


class ClientCredentialsAuthConfig(_TokenEndpointConfig):
    """OAuth2 client credentials grant with a client secret (RFC 6749 §4.4), as Medplum and
    Oystehr machine clients log in."""

    type: Literal["client_credentials"]
    client_secret: SecretRef
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the secret is sent (RFC 6749 §2.3.1): an Authorization header, or form fields."""


class JwtAssertionAuthConfig(_TokenEndpointConfig):
    """SMART Backend Services (SMART App Launch 2.x, "Backend Services"): client credentials
    with a client assertion JWT signed by our private key (RFC 7523)."""

    type: Literal["jwt_assertion"]
    private_key: SecretRef
    """PEM private key (PKCS#8 or traditional, unencrypted): {file: path}, {env: NAME} or ${ENV}."""
    key_id: str | None = None
    """`kid` header: the id of the key in the JWK Set registered with the server. Default: its
    RFC 7638 thumbprint."""
    alg: Literal["RS384", "ES384"] = "RS384"
    """The two algorithms SMART Backend Services requires servers to support."""
    jku: str | None = None
    """Optional `jku` header: the URL of our JWK Set, when the server fetches keys from it."""
    assertion_lifetime_s: int = Field(default=MAX_ASSERTION_LIFETIME_S, ge=10, le=MAX_ASSERTION_LIFETIME_S)
    """`exp` of each assertion, in seconds from now (SMART: at most five minutes)."""


def _none_shorthand(value: Any) -> Any:
    """`auth: none` reads as `{type: none}`."""
    return {"type": "none"} if value == "none" or value is None else value


AuthConfig = Annotated[
    NoAuthConfig | BearerAuthConfig | BasicAuthConfig | ClientCredentialsAuthConfig | JwtAssertionAuthConfig,
    Field(discriminator="type"),
]
#: What a sink config field holds: an AuthConfig, `none` accepted as shorthand.
AuthField = Annotated[AuthConfig, BeforeValidator(_none_shorthand)]


# ---------------------------------------------------------------- runtime strategies


class Auth(Protocol):
    """Hands out the headers that authenticate one request."""

    #: Whether a 401 may be cured by fetching new credentials (token-based schemes).
    refreshable: bool

    def prepare(self) -> None:
        """Read secrets and keys now; raise ConfigError (naming the reference) when they are unusable."""

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        """Headers for the next request; may call the token endpoint through `client`."""

    def invalidate(self) -> None:
        """Forget cached credentials (the server answered 401)."""


class NoAuth:
    refreshable = False

    def prepare(self) -> None:
        return None

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        return None


class StaticHeaderAuth:
    """Bearer or Basic: one header computed from secrets read at `prepare()`.

    Re-read on `invalidate()`, so a rotated token file is picked up after the next 401.
    """

    refreshable = True

    def __init__(self, config: BearerAuthConfig | BasicAuthConfig) -> None:
        self._config = config
        self._header: str | None = None

    def prepare(self) -> None:
        config = self._config
        if isinstance(config, BearerAuthConfig):
            self._header = f"Bearer {config.token.reveal()}"
        else:
            pair = f"{config.username}:{config.password.reveal()}".encode()
            self._header = f"Basic {base64.b64encode(pair).decode('ascii')}"

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        if self._header is None:
            try:
                self.prepare()
            except ConfigError:
                raise AuthUnavailableError(f"{self._config.type} auth: secret not readable") from None
        assert self._header is not None
        return {"Authorization": self._header}

    def invalidate(self) -> None:
        self._header = None


class TokenAuth:
    """OAuth2 client credentials (RFC 6749 §4.4): a cached access token, refreshed early.

    One fetch at a time (an asyncio lock): concurrent requests that find the token stale
    wait for the same fetch instead of each calling the token endpoint.
    """

    refreshable = True

    def __init__(self, config: ClientCredentialsAuthConfig | JwtAssertionAuthConfig,
                 clock: Any = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self._signer: _AssertionSigner | None = None
        self.fetches = 0  # token endpoint calls that returned a token (for tests and debugging)

    def prepare(self) -> None:
        config = self._config
        if isinstance(config, JwtAssertionAuthConfig):
            self._signer = _AssertionSigner(config)
        else:
            config.client_secret.reveal()  # fail at start, naming the reference, if it is missing

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        if self._token is None or self._clock() >= self._refresh_at:
            async with self._lock:
                if self._token is None or self._clock() >= self._refresh_at:
                    await self._fetch(client)
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None
        self._refresh_at = 0.0

    async def _fetch(self, client: httpx.AsyncClient) -> None:
        import httpx  # here, not at the top: module docstring

        config = self._config
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        headers = {"Accept": "application/json"}
        try:
            if isinstance(config, JwtAssertionAuthConfig):
                if self._signer is None:
                    self._signer = _AssertionSigner(config)
                form["client_assertion_type"] = ASSERTION_TYPE
                form["client_assertion"] = self._signer.assertion()
            else:
                secret = config.client_secret.reveal()
                if config.client_auth_method == "client_secret_basic":
                    headers["Authorization"] = "Basic " + base64.b64encode(
                        f"{_form_encode(config.client_id)}:{_form_encode(secret)}".encode()
                    ).decode("ascii")
                else:
                    form["client_id"] = config.client_id
                    form["client_secret"] = secret
        except ConfigError:
            raise AuthUnavailableError(f"{config.type} auth: secret or key not readable") from None
        started = self._clock()
        try:
            response = await client.post(config.token_url, data=form, headers=headers)
        except httpx.TransportError as exc:
            raise AuthUnavailableError(f"token endpoint unreachable: {exc.__class__.__name__}") from None
        if response.status_code != 200:
            raise AuthUnavailableError(_token_refusal(response),
                                       retry_after=30.0 if response.status_code not in _RETRYABLE else None)
        token, lifetime = _parse_token_response(response)
        margin = min(config.refresh_margin_s, lifetime / 2)  # a 60 s token is not refreshed on every call
        self._token = token
        self._refresh_at = started + lifetime - margin
        self.fetches += 1


def _form_encode(value: str) -> str:
    """RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding."""
    return quote_plus(value)


def _token_refusal(response: httpx.Response) -> str:
    code = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error") in _OAUTH_ERRORS:
        code = f" ({body['error']})"
    return f"token endpoint refused: HTTP {response.status_code}{code}"


def _parse_token_response(response: httpx.Response) -> tuple[str, float]:
    try:
        body = response.json()
    except ValueError:
        raise AuthUnavailableError("token endpoint answered 200 without JSON") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthUnavailableError("token endpoint answered 200 without access_token")
    token_type = body.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise AuthUnavailableError("token endpoint issued a token that is not a bearer token")
    expires_in = body.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else DEFAULT_TOKEN_LIFETIME_S
    return token, lifetime


class _AssertionSigner:
    """Signs SMART Backend Services client assertions with one private key.

    Claims (SMART App Launch 2.x, Backend Services, "Authenticating to the token endpoint"):
    iss = sub = client_id, aud = the token URL, exp at most five minutes ahead, a fresh
    random jti each time. Header: alg (RS384 or ES384), kid, typ "JWT", optional jku.
    """

    def __init__(self, config: JwtAssertionAuthConfig) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self._config = config
        pem = config.private_key.reveal().encode()
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError(["jwt_assertion.private_key: not an unencrypted PEM private key"]) from None
        self._key = _signing_key(key, config.alg)
        self.key_id = config.key_id or jwk_thumbprint(public_jwk(self._key))

    def assertion(self, now: float | None = None) -> str:
        import jwt

        config = self._config
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": config.client_id,
            "sub": config.client_id,
            "aud": config.token_url,
            "iat": issued,
            "exp": issued + config.assertion_lifetime_s,
            "jti": secrets.token_urlsafe(24),
        }
        headers: dict[str, Any] = {"kid": self.key_id, "typ": "JWT"}
        if config.jku:
            headers["jku"] = config.jku
        return jwt.encode(claims, self._key, algorithm=config.alg, headers=headers)


def _signing_key(key: object, alg: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The key, checked against the algorithm it must sign with."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        return key
    if alg == "ES384" and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return key
    need = "an RSA key" if alg == "RS384" else "an EC P-384 key"
    raise ConfigError([f"jwt_assertion.private_key: alg {alg} needs {need}"])


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The public half of `key` as a JWK (RFC 7517), e.g. to register with a server."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    public = key.public_key()
    text = RSAAlgorithm.to_jwk(public) if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm.to_jwk(public)
    jwk: dict[str, Any] = json.loads(text)
    return jwk


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, without whitespace."""
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def build_auth(config: AuthConfig) -> Auth:
    """The runtime strategy for one auth config."""
    if isinstance(config, NoAuthConfig):
        return NoAuth()
    if isinstance(config, BearerAuthConfig | BasicAuthConfig):
        return StaticHeaderAuth(config)
    return TokenAuth(config)


__all__ = [
    "Auth",
    "AuthConfig",
    "AuthField",
    "AuthUnavailableError",
    "BasicAuthConfig",
    "BearerAuthConfig",
    "ClientCredentialsAuthConfig",
    "JwtAssertionAuthConfig",
    "NoAuthConfig",
    "build_auth",
    "check_http_url",
    "jwk_thumbprint",
    "public_jwk",
]
