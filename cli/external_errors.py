"""Errors of the libraries under weightbank (botocore for S3, httpx for the Hub) as one line.

They are recognised by class name and module, so that neither library is imported to
handle an error it did not raise.
"""

from __future__ import annotations

from collections.abc import Iterator

_S3_CREDENTIALS = (
    "S3: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
    "(or run `aws configure`)"
)
_BOTOCORE_MESSAGES = {
    "NoCredentialsError": _S3_CREDENTIALS,
    "PartialCredentialsError": "S3: incomplete AWS credentials: {exc}",
    "NoRegionError": "S3: no AWS region configured; set AWS_DEFAULT_REGION (or AWS_REGION)",
    "EndpointConnectionError": "S3: cannot reach the endpoint: {exc}",
    "ConnectTimeoutError": "S3: timed out connecting: {exc}",
    "ReadTimeoutError": "S3: timed out reading: {exc}",
    "ProfileNotFound": "S3: {exc}",
    "ClientError": "S3 refused the request: {exc}",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_external(exc: BaseException) -> str | None:
    """One line for a known library error anywhere in `exc`'s chain, or None (a bug: let it show)."""
    for error in _chain(exc):
        for cls in type(error).__mro__:
            module = cls.__module__ or ""
            if module.startswith("botocore") and cls.__name__ in _BOTOCORE_MESSAGES:
                return _BOTOCORE_MESSAGES[cls.__name__].format(exc=" ".join(str(error).split()))
            if module.startswith(("httpx", "httpcore")) and cls.__name__ == "TransportError":
                return f"cannot reach the server: {type(error).__name__}: {' '.join(str(error).split())}"
    return None
