"""Secrets out of `tracking.uri`, by allowlist: of a URI only its scheme, host, port and path are kept (and, for a
database URI, the connection options of KEPT_QUERY, which hold no secret). Everything else is a credential or may
carry one, whatever its name (`?api-key=`, `X-Amz-Signature=`, `private_token=`, `#token=`, `;token=`): it is taken
out when the config loads, so it never reaches config.yaml, MLflow params, checkpoints, logs or the console, and is
handed to MLflow the way it documents where MLflow can take it: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
(HTTP basic auth, from `http://user:secret@host`) and MLFLOW_TRACKING_TOKEN (a bearer token, from `?token=` or
`?access_token=`). A variable the user already set wins and is never overwritten. The rest is refused, since MLflow
has no way to receive it and keeping it would record it: any other query item, a fragment, path parameters, and
user info in a database URI (SQLAlchemy reads no MLFLOW_* variable: postgresql takes PGUSER / PGPASSWORD or
~/.pgpass). Nothing here prints or raises a message holding a secret.
"""
from __future__ import annotations

import os
from typing import MutableMapping, Optional
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from resnext_dist.errors import InputError

TOKEN_PARAMS = ("token", "access_token")  # an http(s) query item MLflow takes as its bearer token
KEPT_QUERY = ("sslmode", "sslrootcert", "connect_timeout", "application_name", "target_session_attrs", "charset",
              "driver", "mode", "cache")  # database connection options (PostgreSQL, MySQL, MSSQL, SQLite): no secret
HINT = "give credentials through MLFLOW_TRACKING_USERNAME and _PASSWORD or MLFLOW_TRACKING_TOKEN"


def move_uri_credentials(uri: str, environ: Optional[MutableMapping[str, str]] = None) -> str:
    """`uri` with only its allowed parts; credentials go to `environ` (default os.environ) unless already set there;
    InputError (never holding the secret) for what can be neither kept nor moved."""
    env = os.environ if environ is None else environ
    try:
        parts = urlsplit(uri)
        user, password, host, port = parts.username, parts.password, parts.hostname, parts.port
    except ValueError:  # e.g. a non-numeric port; said without echoing the URI, it may hold a secret
        raise InputError("tracking.uri: not a valid URI (check the host and port)") from None
    if len(parts.scheme) < 2:
        return uri  # a path (or a drive letter), no URI: MLflow's file store, nothing in it is sent anywhere
    http = parts.scheme in ("http", "https")
    moved = {}
    if user is not None or password is not None:
        if not http:
            raise InputError(f"tracking.uri: user info (user@ or user:password@) in a {parts.scheme}:// URI would be "
                             "recorded with the run; give it outside the URI (postgresql: PGUSER and PGPASSWORD or "
                             "~/.pgpass) or track through an MLflow server (http://...)")
        moved.update({"MLFLOW_TRACKING_USERNAME": unquote(user or ""), "MLFLOW_TRACKING_PASSWORD": unquote(
            password or "")})
    kept = []
    items = parse_qsl(parts.query, keep_blank_values=True)
    for i, (name, value) in enumerate(items):
        if http and name.lower() in TOKEN_PARAMS and value:
            moved["MLFLOW_TRACKING_TOKEN"] = value
        elif not http and name.lower() in KEPT_QUERY:
            kept.append(f"{name}={value}")
        else:  # by its place, not its name: a name may be the secret itself (?s3cr3t=1)
            what = f"query item {i + 1} of {len(items)}"
            raise InputError(f"tracking.uri: {what} is not kept (a query can carry a secret: only token= of an "
                             f"http(s) URI and a database's connection options are) and MLflow cannot take it; {HINT}")
    if parts.query and not items:
        raise InputError(f"tracking.uri: its query is not kept (a query can carry a secret); {HINT}")
    if ";" in parts.path:
        raise InputError(f"tracking.uri: ';' parameters in its path are not kept (they can carry a secret); {HINT}")
    if parts.fragment or uri.endswith("#"):
        raise InputError(f"tracking.uri: a '#' fragment is not kept (it can carry a secret and MLflow never sends "
                         f"it); {HINT}")
    for name, value in moved.items():
        if value:
            env.setdefault(name, value)
    netloc = (f"[{host}]" if host and ":" in host else host or "") + (f":{port}" if port is not None else "")
    query = "&".join(kept)
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing taken out: as given (urlunsplit would turn sqlite:////abs into sqlite://abs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
