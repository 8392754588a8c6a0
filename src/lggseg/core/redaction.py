"""Credentials never leave the process: `redact` hides them in any text before it is printed, logged, tagged
or written, and `credentials_in` finds them in params, which are refused (params reach dvc.lock and git).

Three kinds are hidden:
- the user info of a URI (`http://alice:pw@host` -> `http://***@host`, any scheme),
- secret-named query or keyword values (`?token=...`, `&password=...`, `sig=`, `X-Amz-Signature=`),
- the literal values of the environment's secrets wherever they appear: variables named like a secret
  (MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, KAGGLE_KEY, AWS_SECRET_ACCESS_KEY, ...) and the passwords
  inside URI-valued variables (MLFLOW_TRACKING_URI, a proxy), also percent-decoded and as a basic-auth header.

Only the standard library: the CLI installs `redact_everything_printed` before torch or mlflow are imported.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import sys
import threading
import traceback
import warnings
from urllib.parse import unquote

MASK = "***"
# `scheme://user:password@host`: user info runs up to the last `@` before the host; `@` inside a raw
# (not percent-encoded) password is allowed, `/`, `?`, `#` and whitespace end it
_USER_INFO = re.compile(r"(?<=//)[^\s/?#@'\"<>]+(?:@[^\s/?#@'\"<>]+)*@")
_SECRET_NAME = r"[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|signature|credential)[\w.-]*"
# `password=...` anywhere; the short, ambiguous names only inside a query string (`?sig=`, `&key=`)
_SECRET_VALUE = re.compile(rf"(?i)(\b{_SECRET_NAME}=|[?&;](?:sig|key|auth|code)=)[^\s&#;'\"<>]+")
# environment variables whose values are secrets by their name (not usernames: a common name such as
# `lggseg` would be masked in every line)
_SECRET_VARIABLE = re.compile(r"(?i)(password|passwd|secret|token|(^|_)key$|(^|_)pat$|connection_string$)")
# shorter values are not masked literally: `1234` would garble every number (their URIs still are)
MIN_LITERAL_LENGTH = 6


def redact(text: str) -> str:
    """`text` with every credential replaced by `***` (see the module docstring for which)."""
    text = _USER_INFO.sub(f"{MASK}@", text)
    text = _SECRET_VALUE.sub(lambda m: m.group(1) + MASK, text)
    for secret in environment_secrets():
        text = text.replace(secret, MASK)
    return text


def environment_secrets() -> list[str]:
    """The secret values of the environment in every spelling they may be printed in, longest first."""
    return list(_secrets_of(tuple(os.environ.items())))


@functools.lru_cache(maxsize=4)
def _secrets_of(environment: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """environment_secrets for one state of the environment: `redact` runs on every log record, tag and param,
    and the environment rarely changes between them."""
    found: set[str] = set()
    for name, value in environment:
        if _SECRET_VARIABLE.search(name):
            found.add(value)
        for user, password in _uri_credentials(value):
            found.update({password, _basic_auth(user, password)})
    variables = dict(environment)
    mlflow_user, mlflow_password = variables.get("MLFLOW_TRACKING_USERNAME"), variables.get("MLFLOW_TRACKING_PASSWORD")
    if mlflow_user and mlflow_password:  # what MLflow sends as `Authorization: Basic ...`
        found.add(_basic_auth(mlflow_user, mlflow_password))
    spellings = found | {unquote(s) for s in found}
    return tuple(sorted((s for s in spellings if len(s) >= MIN_LITERAL_LENGTH), key=len, reverse=True))


def _uri_credentials(value: str) -> list[tuple[str, str]]:
    """(user, password) of each URI with a password in `value`, as written (percent-encoded or not)."""
    pairs = []
    for match in _USER_INFO.finditer(value):
        user, _, password = match.group(0)[:-1].partition(":")
        if password:
            pairs.append((user, password))
    return pairs


def _basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()


def credentials_in(value: str) -> str | None:
    """What credential `value` (a param) holds: "user info (user:password@) in a URI", "a secret in a query
    string or keyword (token=...)", or None."""
    if _USER_INFO.search(value) and "://" in value:
        return "user info (user:password@) in a URI"
    if _SECRET_VALUE.search(value):
        return "a secret in a query string or keyword (e.g. token=..., password=...)"
    return None


# ------------------------------------------------------------------------------------ the process's output


def redact_everything_printed() -> None:
    """From now on, credentials are hidden from what this process prints by way of Python: tracebacks of
    uncaught exceptions (also in threads), every log record (any logger or handler, mlflow's own included)
    and warnings. Idempotent. The CLI calls it first thing; its own error lines call `redact` themselves."""
    if not _redacting(sys.excepthook):
        sys.excepthook = _redacting_excepthook
    if not _redacting(threading.excepthook):
        threading.excepthook = _redacting_thread_excepthook
    if not _redacting(logging.getLogRecordFactory()):
        logging.setLogRecordFactory(_redacting_record_factory(logging.getLogRecordFactory()))
    if not _redacting(warnings.formatwarning):
        warnings.formatwarning = _redacting_formatwarning(warnings.formatwarning)


def _redacting(hook) -> bool:
    return getattr(hook, "_lggseg_redacting", False)


def _marked(hook):
    hook._lggseg_redacting = True
    return hook


@_marked
def _redacting_excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


@_marked
def _redacting_thread_excepthook(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "<unknown>"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))


def _redacting_record_factory(make_record):
    """A LogRecord factory that stores the finished, redacted message (and traceback text): no handler or
    formatter can print the credential afterwards."""
    @_marked
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a bad format call: logging reports it when it emits
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record
    return factory


def _redacting_formatwarning(formatwarning):
    @_marked
    def redacted(*args, **kwargs) -> str:
        return redact(formatwarning(*args, **kwargs))
    return redacted
