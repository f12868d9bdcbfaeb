"""The two kinds of destination ``SCANSTREAM_EXPORT_TO`` may name, and how an answer is judged.

``dicom://AET@host:port`` is a C-STORE SCP: one association, kept open between sends and
reopened once it is gone; SR storage SOP classes in Explicit and Implicit VR Little Endian.
``http(s)://host[:port]/path`` is a DICOMweb root: one STOW-RS POST to ``root/studies`` per SR,
no proxy, no redirect followed, TLS verified, ``Authorization`` from ``SCANSTREAM_EXPORT_AUTH``.
This module parses the variable and opens what it names; the senders are in
:mod:`worker.export.cstore` and :mod:`worker.export.stow`, their shared parts in
:mod:`worker.export.spec`.

=============  ==========================================  ====================================
result         C-STORE                                     STOW-RS
=============  ==========================================  ====================================
Sent           0x0000; warnings 0x0001 0x0107 0x0116       2xx, no FailedSOPSequence entry
               0xB000 0xB006 0xB007
Rejected       0xA9xx 0xCxxx 0x0122 and other failures;    400 404 405 406 409 413 415 422,
               no accepted presentation context for the    other 4xx; a FailedSOPSequence entry
               SR's SOP class (0x0122)                     (status: its FailureReason)
Failed         0xA7xx 0x0213 0xFE00                        500 and other 5xx; a FailureReason
                                                           0xA7xx; a 2xx whose reply lists the
                                                           SR neither as stored nor as failed
Unreachable    no association (refused, rejected,          3xx, 401 403 407 408 429 502 503 504,
               aborted, timed out), no response, 0x0124    connection errors, timeouts
=============  ==========================================  ====================================

0x0124 (not authorised) refuses the caller, not the record: like HTTP 401/403 it is the
destination's state. Bytes pydicom cannot read as a Part 10 file are ``Rejected`` with status
0 (never sent: no destination status exists). Orthanc 1.10.1 answers any storage failure it
hits, a Lua ``ReceivedInstanceFilter`` that raises included, with 0xA700 (``Failed``) and, over
STOW-RS, 200 without the instance in either sequence (``Failed`` too); a filter returning false
is answered as stored (``Sent``). Details are single-line, short and never hold credentials.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

from worker.errors import ConfigError
from worker.export import Destination
from worker.export.cstore import CStoreDestination
from worker.export.spec import AUTH, TO, DestinationSpec
from worker.export.stow import StowDestination
from worker.references import authorization_value, show
from worker.settings import Settings

FORMS: Final = "dicom://AET@host:port or http(s)://host[:port]/path (the DICOMweb root)"
_AET = re.compile(r"[!-~](?:[ -~]{0,14}[!-~])?\Z")  # 1-16 printable ASCII, no edge spaces
_URL = re.compile(r"[!-~]+\Z")  # printable ASCII without spaces


def parse_destination(url: str) -> DestinationSpec:
    """Parse ``SCANSTREAM_EXPORT_TO``; a ConfigError names the variable and the forms.

    >>> parse_destination("dicom://ORTHANC@127.0.0.1:4242").name
    'dicom://ORTHANC@127.0.0.1:4242'
    >>> parse_destination("http://pacs:8042/dicom-web/").stow_url
    'http://pacs:8042/dicom-web/studies'
    >>> parse_destination("https://u:p@pacs/dicom-web")
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: SCANSTREAM_EXPORT_TO='https://***@pacs/dicom-web' holds \
credentials; put them in SCANSTREAM_EXPORT_AUTH instead
    """
    scheme = url.partition(":")[0].lower()
    bad = f"{TO}={repr(url[:200]) if scheme == 'dicom' else show(url)}"  # show hides userinfo
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{bad} is not a valid URL; use {FORMS}") from exc
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{bad} has a query or fragment; use {FORMS}")
    if scheme == "dicom":
        aet, at, hostport = parts.netloc.rpartition("@")
        host = urllib.parse.urlsplit("//" + hostport).hostname or ""
        valid = at and _AET.match(aet) and "\\" not in aet and _URL.match(hostport)
        if not valid or not host or not port:
            raise ConfigError(f"{bad}: use dicom://AET@host:port (AE title of 1-16 characters)")
        if parts.path not in ("", "/"):
            raise ConfigError(f"{bad} has a path; use dicom://AET@host:port")
        return DestinationSpec("dicom", host.lower(), port, ae_title=aet)
    if scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise ConfigError(f"{bad} holds credentials; put them in {AUTH} instead")
        if not _URL.match(url):
            raise ConfigError(f"{bad} has spaces or non-ASCII characters; percent-encode them")
        if not parts.hostname or port == 0:
            raise ConfigError(f"{bad} has no valid host; use {scheme}://host[:port]/path")
        root = f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
        default = 443 if scheme == "https" else 80
        return DestinationSpec("stow", parts.hostname, port or default, url=root)
    raise ConfigError(f"{bad}: use {FORMS}")


def open_destination(settings: Settings) -> Destination:
    """The destination ``settings.export_to`` names; nothing is contacted yet."""
    if not settings.export_to:
        raise ConfigError(f"{TO} is not set; set it to {FORMS}")
    spec = parse_destination(settings.export_to)
    authorization = authorization_value(settings.export_auth.reveal(), AUTH)
    if spec.kind == "dicom":
        if authorization:
            raise ConfigError(f"{AUTH} is for http(s) destinations; C-STORE has none: unset it")
        return CStoreDestination(spec, settings.export_calling_ae_title, settings.export_timeout_s)
    return StowDestination(spec, authorization, settings.export_timeout_s)
