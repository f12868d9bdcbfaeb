"""The C-STORE SCP: DICOM associations in, one durable scan event per instance out.

Every storage SOP class pynetdicom knows is accepted, in every transfer syntax pydicom can decode
here (uncompressed, deflate, RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K with the pylibjpeg plugins);
C-ECHO answers. The response to a C-STORE is:

* ``0x0000`` Success, only after :meth:`DurablePublisher.store` returned (the broker has it);
* ``0xA700`` Out of resources, when it could not be made durable within
  ``SCANSTREAM_GATEWAY_ACK_TIMEOUT_S`` (the broker is away or slow): the sender keeps the
  instance and retries, as storage SCUs do on a failure status;
* ``0x0124`` Refused: not authorised, to a caller outside ``SCANSTREAM_GATEWAY_ALLOWED_CALLERS``
  (entries ``AET``, ``@address`` or ``AET@address``; empty: everyone). A caller whose AE title is
  not listed at all is rejected already at association, by pynetdicom.

A timed-out instance may still reach the broker later, so a resend can give two events for one
instance: the worker then makes two findings with the same finding id (deduplicate on it). It is
never the other way round: no instance is acknowledged without its event.

Logs name the calling AE title, the address and UIDs, never patient data.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pydicom.uid
from pydicom.pixels.decoders.base import get_decoder
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from worker.gateway.durable import DurablePublisher, NotDurable
from worker.gateway.studies import StudyTracker
from worker.settings import Settings

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES, NOT_AUTHORISED, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0x0124, 0xC000


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax with an available pydicom decoder, uncompressed ones first."""
    out = []
    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except Exception:  # noqa: BLE001 - no decoder at all for this syntax
            continue
    uncompressed = [str(u) for u in pydicom.uid.UncompressedTransferSyntaxes]
    return sorted(out, key=lambda u: (u not in uncompressed, u))


def caller_allowed(allowed: tuple[str, ...], ae_title: str, address: str) -> bool:
    """Whether a caller is on the allow-list (empty: everyone).

    >>> caller_allowed(("CT1", "@10.0.0.5", "MR1@10.0.0.6"), "MR1", "10.0.0.7")
    False
    >>> caller_allowed(("CT1", "@10.0.0.5", "MR1@10.0.0.6"), "ANY", "10.0.0.5")
    True
    """
    if not allowed:
        return True
    for entry in allowed:
        aet, _, host = entry.partition("@")
        if (not aet or aet == ae_title) and (not host or host == address):
            return True
    return False


class StoreSCP:
    """The association server; ``start`` returns at once, ``stop`` ends every association."""

    def __init__(
        self, settings: Settings, publisher: DurablePublisher, tracker: StudyTracker
    ) -> None:
        self.settings, self.publisher, self.tracker = settings, publisher, tracker
        self.ae = AE(ae_title=settings.gateway_ae_title)
        self.ae.maximum_associations = settings.gateway_max_associations
        self.ae.maximum_pdu_size = 0  # no limit on what the peer sends
        syntaxes = decodable_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        self.ae.add_supported_context(Verification)
        titles = {e.partition("@")[0] for e in settings.gateway_allowed_callers}
        if settings.gateway_allowed_callers and "" not in titles:
            self.ae.require_calling_aet = sorted(titles)
        self.server: Any = None
        self.stored = 0

    def start(self) -> int:
        """Listen; returns the port (useful when SCANSTREAM_GATEWAY_PORT is 0)."""
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, lambda _e: SUCCESS),
        ]
        address = (self.settings.gateway_host, self.settings.gateway_port)
        self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def handle_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        ae_title = str(requestor.ae_title).strip()
        if not caller_allowed(self.settings.gateway_allowed_callers, ae_title, requestor.address):
            log.warning("C-STORE refused: caller %s@%s not allowed", ae_title, requestor.address)
            return NOT_AUTHORISED
        deadline = time.monotonic() + self.settings.gateway_ack_timeout_s
        data = event.encoded_dataset(include_meta=True)  # as sent: no decode, no re-encode
        try:
            stored = self.publisher.store(data, deadline)
        except NotDurable as exc:
            log.warning("C-STORE from %s answered out of resources: %s", ae_title, exc)
            return OUT_OF_RESOURCES
        except OSError as exc:  # the claim-check folder is full or gone
            log.error("C-STORE from %s: claim-check write failed: %s", ae_title, exc.strerror)
            return OUT_OF_RESOURCES
        header = stored.header
        self.tracker.note(
            header.study_uid,
            header.series_uid,
            header.sop_uid,
            header.sop_class_uid,
            stored.event_id,
        )
        self.stored += 1
        log.debug("stored %s from %s as event %s", header.sop_uid, ae_title, stored.event_id)
        return SUCCESS
