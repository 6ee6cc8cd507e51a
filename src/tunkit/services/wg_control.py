"""UAPI ``get=1`` / ``set=1`` applied to a running :class:`~tunkit.services.wireguard.WireGuardService`.

:class:`UapiGlue` is the :class:`~tunkit.services.uapi_server.UapiHandler` of the daemon: it
turns the parsed requests of :mod:`tunkit.wireguard.uapi` into calls on the sans-IO core
(keys, peers, endpoints, allowed IPs) and on the service's sockets (listen port, fwmark), and
builds the ``get`` snapshot back. The server calls it with the service lock held.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from tunkit.errors import DeviceError
from tunkit.io.udp import endpoint_of
from tunkit.wireguard.crypto import PresharedKey, PrivateKey, PublicKey
from tunkit.wireguard.uapi import (
    ERRNO_PORT_IN_USE,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    UapiError,
)

if TYPE_CHECKING:
    from tunkit.services.wireguard import WireGuardService


class UapiGlue:
    """UAPI get/set against the core device plus the socket-level settings (port, fwmark).

    Called by :class:`UapiServer` with the service lock held. Semantics follow wireguard-go:
    a peer with our own public key is ignored, ``update_only`` skips unknown peers, an
    all-zero private or preshared key clears it, ``listen_port=0`` picks a random port.
    """

    def __init__(self, service: WireGuardService) -> None:
        self.service = service

    def snapshot(self) -> DeviceSnapshot:
        device = self.service.device
        udp = self.service.udp
        key = device.private_key
        peers = []
        for peer in device.peer_snapshots():
            handshake = peer.last_handshake
            seconds = int(handshake) if handshake else 0
            nanos = int((handshake - seconds) * 1e9) if handshake else 0
            endpoint = None
            if peer.endpoint is not None:
                host, port = endpoint_of(peer.endpoint)
                endpoint = (ipaddress.ip_address(host), port)
            psk = peer.preshared_key
            peers.append(PeerSnapshot(
                public_key=peer.public_key.raw,
                preshared_key=None if psk is None or psk.is_zero() else psk.raw,
                endpoint=endpoint,
                last_handshake_time_sec=seconds, last_handshake_time_nsec=nanos,
                tx_bytes=peer.tx_bytes, rx_bytes=peer.rx_bytes,
                persistent_keepalive_interval=peer.persistent_keepalive,
                allowed_ips=list(peer.allowed_ips),
            ))
        return DeviceSnapshot(
            private_key=key.raw if key is not None else None,
            listen_port=udp.port if udp is not None else 0,
            fwmark=udp.fwmark if udp is not None else 0,
            peers=peers,
        )

    def apply_set(self, request: SetRequest) -> None:
        service = self.service
        device = service.device
        now = service.now()
        actions: list[Any] = []
        changes = request.interface
        if changes.private_key is not None:
            raw = changes.private_key
            device.set_private_key(PrivateKey(raw) if any(raw) else None)
        if changes.listen_port is not None:
            try:
                device.listen_port = service.set_listen_port(changes.listen_port)
            except DeviceError as exc:
                raise UapiError(ERRNO_PORT_IN_USE, str(exc)) from exc
        if changes.fwmark is not None:
            service.set_fwmark(changes.fwmark)
            device.fwmark = changes.fwmark
        if changes.replace_peers:
            device.remove_all_peers()
        for change in request.peers:
            public_key = PublicKey(change.public_key)
            if device.is_own_key(public_key):
                continue
            if change.remove:
                device.remove_peer(public_key)
                continue
            if public_key not in device.peers:
                if change.update_only:
                    continue
                device.add_peer(public_key)
            endpoint = None
            if change.endpoint is not None:
                address, port = change.endpoint
                endpoint = endpoint_of((str(address), port))
            psk = change.preshared_key
            actions.extend(device.update_peer(
                public_key, now,
                preshared_key=PresharedKey(psk) if psk is not None else None,
                endpoint=endpoint,
                persistent_keepalive=change.persistent_keepalive_interval,
            ) or ())
            if change.replace_allowed_ips or change.allowed_ips:
                device.set_allowed_ips(
                    public_key, change.allowed_ips, replace=change.replace_allowed_ips
                )
        if actions:
            service._execute(actions)
        service.stop_wake()
