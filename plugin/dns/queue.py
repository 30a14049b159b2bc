"""Reading the NFQUEUE that holds DNS answers (NetfilterQueue over libnetfilter_queue).

Kernel background. An nft rule ``queue num N`` hands the packet to
``nfnetlink_queue``, which passes a copy to the netlink socket bound to
queue N *in the same network namespace* and keeps the packet until that
socket sends a verdict for its id. Without ``bypass`` a packet for a queue
nobody reads is dropped; a full queue (``max_len``) drops too: fail closed.
The handler runs on this reader's thread, so the verdict (accept) goes out
only after it returned, i.e. after the learned addresses are in force.

``netns``: a path such as ``/run/netns/NAME`` to read the queue of another
network namespace (the kernel tier): the NetfilterQueue handle, and so its
netlink socket, is made on a thread inside that namespace (a socket stays in
the namespace it was made in).
"""
from __future__ import annotations

import logging
import os
import selectors
import threading
from typing import Callable, Optional

from netfilterqueue import COPY_PACKET, NetfilterQueue

from plugin.kernel import netns as netns_mod

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 5353
MAX_LEN = 4096          # answers held at once before the kernel drops new ones
COPY_RANGE = 65535


class DnsQueue:
    """Binds queue ``num`` and calls ``handler(packet, outdev)`` for each packet, then accepts it."""

    def __init__(self, num: int, handler: Callable[[bytes, int], None], netns: Optional[str] = None):
        self.num, self.handler, self.netns = num, handler, netns
        self._nfq = self._thread = None
        self._wake_r = self._wake_w = -1
        self.handled = 0

    def start(self) -> None:
        """Bind the queue (raises OSError when another reader holds it) and start reading."""
        self._nfq = netns_mod.run_in(self.netns, NetfilterQueue) if self.netns else NetfilterQueue()
        self._nfq.bind(self.num, self._callback, max_len=MAX_LEN, mode=COPY_PACKET, range=COPY_RANGE)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"dns-queue-{self.num}", daemon=True)
        self._thread.start()

    def _callback(self, pkt) -> None:
        try:
            self.handler(pkt.get_payload(), pkt.outdev)
        finally:
            self.handled += 1
            pkt.accept()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._nfq.get_fd(), selectors.EVENT_READ, "queue")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        try:
            while True:
                events = sel.select()
                if any(key.data == "stop" for key, _ in events):
                    return
                try:
                    self._nfq.run(block=False)
                except OSError as exc:  # ENOBUFS: the kernel dropped some (fail closed)
                    log.warning("DNS queue %d: %s", self.num, exc)
        finally:
            sel.close()

    def stop(self) -> None:
        """Stop reading and unbind; queued answers are dropped by the kernel from now on."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(5)
            self._thread = None
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None   # its handle and socket close with it
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
