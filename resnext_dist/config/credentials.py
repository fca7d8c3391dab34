"""Secrets out of `tracking.uri`: a user name and password (`http://user:secret@host:5000`) or a token in the query
(`?token=...`) are taken out of the URI when the config loads, so they never reach config.yaml, MLflow params,
checkpoints, logs or the console, and are handed to MLflow the way it documents: the environment variables
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (HTTP basic auth) and MLFLOW_TRACKING_TOKEN (bearer token).
A variable the user already set wins and is never overwritten. Any other query value that looks secret
(password, secret, api_key, ...) is refused: MLflow has no way to receive it, and keeping it would record it;
so is a password in a database URI (postgresql://user:pw@...), which only the URI can carry.
Nothing here prints or raises a message holding a secret.
"""
from __future__ import annotations

import os
from typing import MutableMapping, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from resnext_dist.errors import InputError

TOKEN_PARAMS = ("token", "access_token")
SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "api_key", "apikey", "key", "auth", "authorization",
                 "client_secret", "sig", "signature", "credential", "credentials")


def move_uri_credentials(uri: str, environ: Optional[MutableMapping[str, str]] = None) -> str:
    """`uri` without its credentials; they go to `environ` (default os.environ) unless already set there."""
    env = os.environ if environ is None else environ
    if not uri or "://" not in uri:
        return uri  # a path or an empty string: nothing to hide
    try:
        parts = urlsplit(uri)
        user, password, host, port = parts.username, parts.password, parts.hostname, parts.port
    except ValueError:  # e.g. a non-numeric port; say so without echoing the URI, it may hold a secret
        raise InputError("tracking.uri: not a valid URI (check the host and port)") from None
    http = parts.scheme in ("http", "https")
    if not http and password:
        # A database URI (postgresql://user:pw@host/db): SQLAlchemy reads no MLFLOW_* variable, so moving the
        # password would break the connection, and keeping it would record it.
        raise InputError(f"tracking.uri: a password in a {parts.scheme}:// URI would be recorded with the run; give "
                         "it outside the URI (postgresql: PGPASSWORD or ~/.pgpass) or track through an MLflow "
                         "server (http://...)")
    netloc = parts.netloc
    if http and (user is not None or password is not None):
        netloc = (f"[{host}]" if host and ":" in host else host or "") + (f":{port}" if port else "")
        if user:
            env.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
        if password:
            env.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    kept = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        lowered = name.lower()
        if lowered in TOKEN_PARAMS and http:
            env.setdefault("MLFLOW_TRACKING_TOKEN", value)
        elif lowered in SECRET_PARAMS or lowered in TOKEN_PARAMS:
            raise InputError(f"tracking.uri: the query parameter {name!r} looks like a secret; give credentials "
                             "through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
        else:
            kept.append((name, value))
    query = urlencode(kept) if len(kept) != len(parse_qsl(parts.query, keep_blank_values=True)) else parts.query
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing taken out: as given (urlunsplit would turn sqlite:////abs into sqlite://abs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
