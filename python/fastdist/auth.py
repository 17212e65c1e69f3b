"""Registry credentials and the pieces of the token flow that do not touch the network.

Credentials come from docker's ``config.json`` (``$DOCKER_CONFIG`` or ``~/.docker``): ``auths``
(base64 ``auth`` or ``username``/``password``, ``identitytoken``), ``credHelpers`` per host and
a default ``credsStore``, the helpers run as ``docker-credential-<name> get`` (host on stdin, JSON
out). The transport performs the HTTP side of the flow (distribution token spec, ``token.md`` and
``oauth.md``); this module parses challenges and token answers and caches tokens per (host, scope).
Nothing here logs or formats a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AuthenticationError
from .store import write_file_atomic

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HELPER_TIMEOUT = 30.0
# A token without expires_in lives 60 s (token.md#token-response-fields); refresh a bit early.
DEFAULT_TOKEN_LIFETIME = 60.0
TOKEN_EXPIRY_MARGIN = 5.0


@dataclass(frozen=True)
class Credentials:
    """A username/password pair, or an identity (refresh) token. ``repr`` hides secrets."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)


def normalize_host(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``index.docker.io``; ``host:5000`` unchanged."""
    k = key.strip()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix) :]
    return k.split("/", 1)[0].lower()


def _candidate_keys(host: str) -> list[str]:
    h = normalize_host(host)
    if h in _HUB_HOSTS:
        return [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", "registry-1.docker.io"]
    return [h]


class CredentialStore:
    """Looks up credentials per registry host, as docker does."""

    def __init__(
        self,
        auths: Mapping[str, Credentials] | None = None,
        cred_helpers: Mapping[str, str] | None = None,
        creds_store: str | None = None,
    ) -> None:
        self._auths = {normalize_host(k): v for k, v in (auths or {}).items()}
        self._helpers = {normalize_host(k): v for k, v in (cred_helpers or {}).items()}
        self._store = creds_store or None
        self._lock = threading.Lock()
        self._helper_cache: dict[tuple[str, str], Credentials | None] = {}

    @classmethod
    def from_docker_config(cls, path: str | None = None) -> CredentialStore:
        """Read ``path`` (a ``config.json`` or a directory holding one), else ``$DOCKER_CONFIG``
        or ``~/.docker/config.json``. A missing file means no credentials."""
        if path is None:
            base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
            path = base
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as e:
            raise AuthenticationError(
                f"cannot read docker config {p}: {e.strerror}",
                hint="check the file's permissions or set DOCKER_CONFIG",
            ) from None
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise AuthenticationError(f"docker config {p} is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise AuthenticationError(f"docker config {p} is not a JSON object")
        auths: dict[str, Credentials] = {}
        for key, entry in (obj.get("auths") or {}).items():
            if isinstance(entry, dict):
                creds = _credentials_from_auth_entry(entry, str(p), key)
                if creds is not None:
                    auths[key] = creds
        helpers_raw = obj.get("credHelpers") or {}
        helpers = {k: v for k, v in helpers_raw.items() if isinstance(v, str) and v}
        store = obj.get("credsStore")
        return cls(auths, helpers, store if isinstance(store, str) else None)

    def get(self, host: str) -> Credentials | None:
        """Credentials for a registry host (``docker.io`` and ``registry-1.docker.io`` share
        Docker Hub's entry), or None to go anonymous."""
        keys = _candidate_keys(host)
        for key in keys:
            helper = self._helpers.get(normalize_host(key))
            if helper:
                return self._from_helper(helper, key)
        if self._store:
            creds = self._from_helper(self._store, keys[0])
            if creds is not None:
                return creds
        for key in keys:
            found = self._auths.get(normalize_host(key))
            if found is not None:
                return found
        return None

    def _from_helper(self, helper: str, server: str) -> Credentials | None:
        with self._lock:
            if (helper, server) in self._helper_cache:
                return self._helper_cache[(helper, server)]
        creds = run_credential_helper(helper, server)
        with self._lock:
            self._helper_cache[(helper, server)] = creds
        return creds


def _credentials_from_auth_entry(entry: dict[str, Any], where: str, key: str) -> Credentials | None:
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError(
                f"docker config {where}: auths[{key!r}].auth is not valid base64"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationError(
                f"docker config {where}: auths[{key!r}].auth is not 'user:password'"
            )
    token = entry.get("identitytoken") or None
    if not isinstance(username, str) or not isinstance(password, str):
        raise AuthenticationError(f"docker config {where}: auths[{key!r}] has non-string fields")
    if not (username or password or token):
        return None
    return Credentials(username, password, token if isinstance(token, str) else None)


def run_credential_helper(name: str, server: str) -> Credentials | None:
    """``docker-credential-<name> get`` with the server on stdin (docker-credential-helpers)."""
    program, proc = _helper_process(name, "get", server.encode())
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower() or "credentials not found" in (
            proc.stderr.decode(errors="replace").lower()
        ):
            return None
        # The helper's output may echo secrets: do not quote it.
        raise AuthenticationError(
            f"credential helper {program} failed with exit status {proc.returncode}"
        )
    try:
        obj = json.loads(out)
    except ValueError:
        raise AuthenticationError(f"credential helper {program} printed invalid JSON") from None
    if not isinstance(obj, dict):
        raise AuthenticationError(f"credential helper {program} printed a non-object")
    username = obj.get("Username") or ""
    secret = obj.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthenticationError(f"credential helper {program} printed non-string fields")
    if not secret:
        return None
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


# --- login / logout: writing the docker config ------------------------------------------------
def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (what ``from_docker_config``
    reads)."""
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def auth_key(host: str) -> str:
    """The ``auths`` key docker uses for ``host`` (Docker Hub's is its v1 URL)."""
    keys = _candidate_keys(host)
    return keys[0]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise AuthenticationError(f"cannot read docker config {path}: {e.strerror}") from None
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise AuthenticationError(f"docker config {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise AuthenticationError(f"docker config {path} is not a JSON object")
    return obj


def _write_config(path: Path, obj: dict[str, Any]) -> None:
    """Atomically, 0600 (it holds secrets), through no symlink: ``write_file_atomic``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (json.dumps(obj, indent="\t") + "\n").encode()
    try:
        write_file_atomic(path, data, 0o600)
    except OSError as e:
        raise AuthenticationError(f"cannot write docker config {path}: {e.strerror}") from None


def _helper_for(obj: dict[str, Any], host: str) -> str | None:
    helpers = obj.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key in _candidate_keys(host):
            for k, v in helpers.items():
                if normalize_host(k) == normalize_host(key) and isinstance(v, str) and v:
                    return v
    store = obj.get("credsStore")
    return store if isinstance(store, str) and store else None


def _helper_process(
    name: str, action: str, payload: bytes
) -> tuple[str, subprocess.CompletedProcess[bytes]]:
    """Run ``docker-credential-<name> ACTION`` with ``payload`` on stdin: the program's name and
    its finished process (a missing helper or a timeout is an AuthenticationError)."""
    if not _HELPER_NAME_RE.fullmatch(name):
        raise AuthenticationError(f"invalid credential helper name {name!r}")
    import subprocess  # only for a credential helper: not at every pull's start-up

    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [program, action],
            input=payload,
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise AuthenticationError(
            f"credential helper {program} not found",
            hint="install it or remove it from credHelpers/credsStore in docker's config.json",
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"credential helper {program} timed out") from None
    return program, proc


def _run_helper(name: str, action: str, payload: bytes) -> None:
    program, proc = _helper_process(name, action, payload)
    if proc.returncode != 0:
        raise AuthenticationError(  # its output may echo secrets: not quoted
            f"credential helper {program} {action} failed with exit status {proc.returncode}"
        )


def store_login(host: str, creds: Credentials, path: Path | None = None) -> str:
    """Save ``creds`` for ``host`` where docker would: the host's ``credHelpers`` entry or the
    ``credsStore`` (``docker-credential-<name> store``), else base64 ``auths`` in the config
    file. Returns where they went (for the user, no secret)."""
    path = path or docker_config_path()
    obj = _read_config(path)
    key = auth_key(host)
    helper = _helper_for(obj, host)
    if helper is not None:
        payload = json.dumps(
            {"ServerURL": key, "Username": creds.username, "Secret": creds.password}
        ).encode()
        _run_helper(helper, "store", payload)
        return f"credential helper docker-credential-{helper}"
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        auths = obj["auths"] = {}
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[key] = {"auth": token}
    _write_config(path, obj)
    return str(path)


def remove_login(host: str, path: Path | None = None) -> bool:
    """Forget the credentials of ``host`` (helper ``erase``, or its ``auths`` entry); whether
    there was anything to forget (a helper is always asked)."""
    path = path or docker_config_path()
    obj = _read_config(path)
    helper = _helper_for(obj, host)
    if helper is not None:
        _run_helper(helper, "erase", auth_key(host).encode())
        return True
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        return False
    wanted = {normalize_host(k) for k in _candidate_keys(host)}
    gone = [k for k in auths if normalize_host(k) in wanted]
    for k in gone:
        del auths[k]
    if gone:
        _write_config(path, obj)
    return bool(gone)


# --- challenges and tokens ---------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``Bearer realm="…",service="…",scope="…"``."""

    scheme: str  # lowercase: "bearer" or "basic"
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(,|$)')
_SCHEME_RE = re.compile(r"\s*,*\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse the challenges in a ``WWW-Authenticate`` header (RFC 7235 §4.1), leniently."""
    challenges: list[Challenge] = []
    pos = 0
    n = len(header)
    while pos < n:
        m = _SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < n:
            pm = _PARAM_RE.match(header, pos)
            if not pm:
                break
            key, value = pm.group(1).lower(), pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[key] = value
            pos = pm.end()
        challenges.append(Challenge(scheme, params))
        # Whatever follows must start the next challenge (a bare scheme word); else stop.
        if pos < n and not _SCHEME_RE.match(header, pos):
            break
    return challenges


# RFC 9110 §5.5 field-value: visible characters, space, tab and obs-text (what http.client can
# send: latin-1); no CR, LF or other control characters, which would split or end the header.
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# A bearer token goes into ``Authorization: Bearer <token>``: RFC 6750's b64token is a subset of
# the visible ASCII characters allowed here (JWTs and every registry's opaque tokens fit).
_TOKEN_VALUE_RE = re.compile(r"[\x21-\x7e]+")


def valid_header_value(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header value as it is."""
    return _FIELD_VALUE_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_at: float


def parse_token_response(body: bytes, *, now: float | None = None) -> Token:
    """``{"token": …}`` or ``{"access_token": …}`` with optional ``expires_in`` (seconds)."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise AuthenticationError("token server answered with invalid JSON") from None
    if not isinstance(obj, dict):
        raise AuthenticationError("token server answered with a non-object")
    value = obj.get("token") or obj.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthenticationError("token server answer has no token")
    if _TOKEN_VALUE_RE.fullmatch(value) is None:
        # Quoting it would print a secret: say what is wrong with it only.
        raise AuthenticationError(
            "token server answered with a token holding characters a header cannot carry "
            "(whitespace, control or non-ASCII characters)",
            hint="the token server is broken or hostile; report it to the registry's operator",
        )
    lifetime = obj.get("expires_in")
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    start = time.monotonic() if now is None else now
    return Token(value, start + float(lifetime) - TOKEN_EXPIRY_MARGIN)


class TokenCache:
    """Bearer tokens per (registry host, scope), dropped when they expire. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], Token] = {}

    def get(self, host: str, scope: str) -> str | None:
        with self._lock:
            tok = self._tokens.get((host, scope))
            if tok is None:
                return None
            if tok.expires_at <= time.monotonic():
                del self._tokens[(host, scope)]
                return None
            return tok.value

    def put(self, host: str, scope: str, token: Token) -> None:
        with self._lock:
            self._tokens[(host, scope)] = token

    def drop(self, host: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((host, scope), None)
