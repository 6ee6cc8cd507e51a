"""Pure packet layer: parse/build IPv4, IPv6, TCP, UDP, ICMP(v6), Ethernet/ARP; checksums
(RFC 1071/1624, vectorised with numpy); in-place NAT rewrite; virtio_net_hdr with GSO split
and GRO coalesce; pcap writer; one-line descriptions; echo/ARP/ND responders.

Nothing here does I/O or reads clocks.  Parsers raise ``MalformedPacketError`` on bad
input.  Import the submodules directly (``tunkit.packet.vnet`` ...).
"""
