"""Who may use the server: one policy for the web UI and the HTTP API.

The operator gives credentials with two flags, as in A1111: ``--gradio-auth`` (the UI's login) and
``--api-auth`` (HTTP Basic on ``/sdapi``, ``/easel`` and ``/controlnet``). Unlike A1111, no
combination leaves a door open: when only one of them is given, the other side requires the same
credentials. So with any credentials configured, every route that runs a job, changes settings,
uploads or reads outputs needs them:

============== ============================ ===========================================
flags          web UI and Gradio endpoints  HTTP API
============== ============================ ===========================================
none           open                         open
--gradio-auth  gradio-auth login            gradio-auth users, HTTP Basic
--api-auth     api-auth login               api-auth users, HTTP Basic
both           gradio-auth login            api-auth users, HTTP Basic
============== ============================ ===========================================

``start_warnings`` says at start-up, loudly, what is exposed to whom; ``share_refusal`` is why a
public ``--share`` link without credentials is refused (unless ``--share-insecure``).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

Credentials = tuple[tuple[str, str], ...]


def parse_credentials(text: str, flag: str = "--api-auth") -> list[tuple[str, str]]:
    """``"u:p,u2:p2"`` (commas or newlines) -> ``[("u", "p"), ("u2", "p2")]``; a bad entry raises
    ValueError naming ``flag``."""
    pairs = []
    for entry in text.replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{flag} entry {entry!r} is not user:password (both non-empty)")
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"{flag} needs at least one user:password entry")
    return pairs


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """The (user, password) of an ``Authorization: Basic ...`` header; None if absent or unreadable."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def credentials_match(given: tuple[str, str] | None, allowed: Credentials | list[tuple[str, str]]) -> bool:
    """True when ``given`` is one of ``allowed``; every entry is compared in constant time."""
    if given is None:
        return False
    user, password = given[0].encode(), given[1].encode()
    found = False
    for allowed_user, allowed_password in allowed:
        same_user = secrets.compare_digest(user, allowed_user.encode())
        same_password = secrets.compare_digest(password, allowed_password.encode())
        found |= same_user and same_password
    return found


@dataclass(frozen=True)
class AuthPolicy:
    """The credentials the operator gave (``--gradio-auth``, ``--api-auth``) and what each side requires."""

    gradio_auth: Credentials = ()
    api_auth: Credentials = ()

    @classmethod
    def from_flags(cls, gradio_auth: str | None = None, api_auth: str | None = None) -> AuthPolicy:
        """Parse the flags' ``user:pass[,user2:pass2]`` texts (None = not given)."""
        ui = tuple(parse_credentials(gradio_auth, "--gradio-auth")) if gradio_auth else ()
        api = tuple(parse_credentials(api_auth, "--api-auth")) if api_auth is not None else ()
        return cls(ui, api)

    @property
    def ui(self) -> Credentials:
        """The logins the web UI and every Gradio endpoint accept (empty: open)."""
        return self.gradio_auth or self.api_auth

    @property
    def api(self) -> Credentials:
        """The HTTP Basic credentials the API accepts (empty: open)."""
        return self.api_auth or self.gradio_auth

    @property
    def is_open(self) -> bool:
        """True when no credentials are configured: anyone who reaches the port can do anything."""
        return not (self.gradio_auth or self.api_auth)

    def share_refusal(self, share: bool, share_insecure: bool) -> str | None:
        """Why the server must not start (a public link open to anyone), or None."""
        if share and self.is_open and not share_insecure:
            return ("--share opens a public link that anyone on the internet can use to run jobs, change settings "
                    "and read your outputs: add --gradio-auth user:password (recommended), or --share-insecure "
                    "to share it without credentials anyway")
        return None

    def start_warnings(self, *, exposed: bool, share: bool, webui: bool, api: bool) -> list[str]:
        """What is reachable without credentials, or with the other flag's credentials, said at start.

        ``exposed``: reachable from other machines (--listen or --share).
        """
        notes = []
        where = "anyone on the internet (the --share link)" if share else "anyone on your network (--listen)"
        if self.is_open and (exposed or share):
            parts = [p for p, on in (("the web UI", webui), ("the HTTP API", api)) if on]
            notes.append(f"WARNING: no credentials: {where} can use {' and '.join(parts)}: run jobs, change "
                         "settings, upload images and read outputs. Add --gradio-auth / --api-auth user:password")
        if api and self.gradio_auth and not self.api_auth:
            notes.append("note: --gradio-auth without --api-auth: the HTTP API requires the --gradio-auth "
                         "credentials too (HTTP Basic)")
        if webui and self.api_auth and not self.gradio_auth:
            notes.append("note: --api-auth without --gradio-auth: the web UI asks for the --api-auth "
                         "credentials too")
        return notes
