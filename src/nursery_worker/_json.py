"""Job arguments are JSON, checked at the call site so that nothing unencodable is ever written.

``json.dumps`` alone is too lenient for a durable store: it turns ``{1: "a"}`` into ``{"1": "a"}``
and writes ``NaN``, which PostgreSQL's jsonb rejects, and PostgreSQL also rejects ``\\u0000`` in
text. We walk the value once and name the exact path of the first bad element.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigurationError

#: Default cap on the encoded size of one job's arguments (bytes).
DEFAULT_MAX_ARGS_BYTES = 1_000_000
#: Default cap on the encoded size of one job's result (bytes), the same on both engines. A quarter
#: of what PostgreSQL can hold in one jsonb value (:data:`POSTGRES_JSONB_MAX_BYTES`), which leaves
#: room for jsonb's binary form being larger than the text; two such results in one completion
#: batch stay far below libpq's 1 GiB message limit; and a result is read back whole by
#: ``app.get_job``, ``wait_for`` and the dashboard, so anything near this size belongs elsewhere.
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024
#: The most PostgreSQL stores in one jsonb value or string (2**28 - 1 bytes); larger is refused.
POSTGRES_JSONB_MAX_BYTES = 268_435_455
#: How to return less, in every message about an oversized result.
RESULT_SIZE_FIX = (
    "store a large result elsewhere (a file, object storage, a table of your own) and return a reference "
    "to it, such as its key or URL"
)

_SCALARS = (str, int, float, bool, type(None))
#: Types whose values ``json.loads(json.dumps(v)) == v`` exactly (not subclasses: an IntEnum decodes as int).
_EXACT_SCALARS = frozenset(_SCALARS)
_HINTS = {
    "set": "pass a list instead (sorted(...) keeps it stable)",
    "frozenset": "pass a list instead",
    "bytes": "decode it to str or base64-encode it",
    "bytearray": "decode it to str or base64-encode it",
    "datetime": "pass .isoformat() and parse it in the task",
    "date": "pass .isoformat() and parse it in the task",
    "Decimal": "pass str(value) and parse it in the task",
    "UUID": "pass str(value)",
}


def check_storable(value: str, *, what: str, where: str) -> str:
    """Return *value* if the database can store it as text, else raise ``ConfigurationError``.

    PostgreSQL refuses a NUL character in text, and neither engine can encode a lone surrogate:
    either would only fail later, in the database, with a generic error.
    """
    if "\x00" in value:
        raise ConfigurationError(
            f"{where}: {what} {value!r} contains a NUL character (\\x00), which the database cannot store; remove it"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{where}: {what} {value!r} contains a lone surrogate, which is not valid UTF-8; fix the string's decoding"
        ) from None
    return value


def _fail(path: str, value: Any, why: str | None = None) -> TypeError:
    kind = type(value).__name__
    hint = _HINTS.get(kind, "pass only str, int, float, bool, None, list and dict with str keys")
    return TypeError(f"job argument {path} is not JSON: {why or f'{kind} {value!r:.80}'}; {hint}")


def check_json(value: Any, path: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming *path* if *value* does not round-trip through JSON."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(
                f"job argument {path} contains a NUL character (\\x00), which PostgreSQL cannot store; remove it"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"job argument {path} contains a lone surrogate, which is not valid UTF-8; fix the string's decoding"
            ) from None
        return
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"job argument {path} is {value!r}, which JSON cannot represent; use None or a finite number"
            )
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"job argument {path} has a {type(key).__name__} key {key!r}; JSON object keys must be str "
                    "(use str(key))"
                )
            check_json(key, f"{path} key {key!r}")
            check_json(item, f"{path}[{key!r}]")
        return
    raise _fail(path, value)


def encode_args_value(
    args: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_ARGS_BYTES
) -> tuple[str, dict[str, Any]]:
    """Like :func:`encode_args`, and also the arguments as the row will hold them (decoded again).

    Flat arguments of exact scalar types (the common case) take a fast path: one ``json.dumps``,
    checked as a whole, and a copy of the dict (such values round-trip unchanged). Anything else, or
    any doubt, goes through the walk of :func:`encode_args` and a decode.
    """
    if all(type(v) in _EXACT_SCALARS for v in args.values()):
        try:
            text = json.dumps(args, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            size = len(text.encode())  # a lone surrogate raises here
        except (ValueError, UnicodeEncodeError):
            text = ""  # NaN, Infinity or a surrogate: the walk below names the argument
        if text and "\\u0000" not in text and size <= max_bytes:
            return text, dict(args)
    text = encode_args(args, max_bytes=max_bytes)
    value: dict[str, Any] = json.loads(text)
    return text, value


#: One encoder, made once: ``json.dumps`` with options builds a new ``JSONEncoder`` per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_args_text(args: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_ARGS_BYTES) -> str:
    """Like :func:`encode_args`, for a bulk enqueue that keeps only the JSON (no decoded value).

    Flat arguments of exact scalar types take one encode, checked as a whole; anything else, or any
    doubt (NaN, a NUL, a lone surrogate, the size), goes through :func:`encode_args`, which names
    the argument at fault. The keys must be ``str`` (the caller checks).

    Raises:
        TypeError, ValueError: as :func:`encode_args`.
    """
    for value in args.values():
        if type(value) not in _EXACT_SCALARS:
            return encode_args(args, max_bytes=max_bytes)
    try:
        text = _encode(args)
    except ValueError:  # NaN or Infinity: the walk names the argument
        return encode_args(args, max_bytes=max_bytes)
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode())
        except UnicodeEncodeError:  # a lone surrogate
            return encode_args(args, max_bytes=max_bytes)
    if size > max_bytes or "\\u0000" in text:
        return encode_args(args, max_bytes=max_bytes)
    return text


def encode_args(args: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_ARGS_BYTES) -> str:
    """Validate and encode a job's keyword arguments as a JSON object string.

    Raises:
        TypeError: an argument is not JSON (a set, bytes, an object, a non-str key).
        ValueError: NaN/Infinity, a NUL character, or an encoded size above *max_bytes*.
    """
    for key, value in args.items():
        check_json(value, key)
    text = json.dumps(args, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode())
    if size > max_bytes:
        raise ValueError(
            f"job arguments encode to {size:,} bytes of JSON, above the limit of {max_bytes:,} (max_args_bytes); "
            "store the payload elsewhere and pass a reference to it, or raise App(max_args_bytes=...)"
        )
    return text


def check_result_size(encoded: str, limit: int, *, task: str | None = None) -> None:
    """Refuse a job result whose JSON, *encoded*, is over *limit* bytes in UTF-8.

    The worker calls it right after encoding a result, before anything is written: an oversized
    result fails its attempt for good (like a result that is not JSON) with a message that names the
    size, the limit and the fix, instead of reaching the database.

    Raises:
        ValueError: the result is over *limit* bytes; the message gives its size, the limit and how
            to return less.
    """
    if len(encoded) * 4 <= limit:  # no character takes more than 4 bytes: no need to encode
        return
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return
    who = f"task {task!r} returned a result" if task is not None else "the result"
    raise ValueError(
        f"{who} of {size:,} bytes of JSON, above the limit of {limit:,} (max_result_bytes); {RESULT_SIZE_FIX}; "
        "or raise the worker's limit (open_worker(max_result_bytes=...), `nursery-worker run --max-result-bytes`)"
    )
