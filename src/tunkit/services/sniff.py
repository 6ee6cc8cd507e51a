"""``tunkit sniff``: watch a TUN/TAP device, optionally answer pings, optionally write a pcap.

Contract:
* one line per packet on stdout: ``HH:MM:SS.mmm <describe_packet(...)>``, flushed per line;
* ``-w FILE`` writes a classic pcap (LINKTYPE_RAW for TUN, LINKTYPE_ETHERNET for TAP)
  that ``tcpdump -r`` reads;
* ``--respond`` writes ICMP/ICMPv6 echo replies back into the device, so pinging any other
  address of the device's subnet works; in TAP mode it answers ARP and IPv6 neighbour
  solicitations too, using a fixed locally administered MAC;
* a device we created is removed when we exit (SIGINT/SIGTERM included); a device we only
  attached to stays.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import time
from contextlib import ExitStack
from typing import IO, Any

from tunkit.errors import ConfigError, DeviceError
from tunkit.packet.describe import describe_packet
from tunkit.packet.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapWriter
from tunkit.packet.respond import echo_reply_for, tap_reply_for

#: The MAC address that ``--respond`` answers with in TAP mode ("tk" in the OUI bytes).
RESPONDER_MAC = bytes.fromhex("02746b000001")


def parse_interfaces(cidrs: list[str]) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Parse ``--address`` values, raising one clear ConfigError for a bad one."""
    result: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for text in cidrs:
        if "/" not in text:
            raise ConfigError(f"invalid CIDR {text!r}: expected ADDRESS/PREFIXLEN, e.g. 10.9.0.1/24")
        try:
            result.append(ipaddress.ip_interface(text))
        except ValueError:
            raise ConfigError(f"invalid CIDR {text!r}: expected ADDRESS/PREFIXLEN, e.g. 10.9.0.1/24") from None
    return result


def format_timestamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def run_sniff(args: argparse.Namespace) -> int:
    from tunkit.cli import require_root
    from tunkit.io.netlink import Netlink
    from tunkit.io.tun import open_tun

    interfaces = parse_interfaces(args.address or [])
    if args.attach and interfaces:
        raise ConfigError("--address goes with --create; an attached device keeps its addresses")
    require_root("tunkit sniff")
    name = args.create if args.create is not None else args.attach
    tap = bool(args.tap)
    out: IO[str] = sys.stdout
    captured = replies = 0
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with ExitStack() as stack:
            device = open_tun(name, tap=tap, attach=args.attach is not None)
            stack.callback(device.close)
            if args.create is not None:
                with Netlink() as nl:
                    if args.mtu:
                        nl.set_mtu(device.name, args.mtu)
                    for iface in interfaces:
                        nl.add_address(device.name, str(iface))
                    nl.set_up(device.name)
            pcap = None
            if args.write:
                stream = stack.enter_context(open(args.write, "wb"))
                pcap = PcapWriter(stream, LINKTYPE_ETHERNET if tap else LINKTYPE_RAW)
            own = {iface.ip.packed for iface in interfaces}
            networks = [iface.network for iface in interfaces]

            def answer_for(addr: bytes) -> bool:
                if addr in own:
                    return False
                ip = ipaddress.ip_address(addr)
                return any(ip in net for net in networks) if networks else True

            print(
                f"sniffing on {device.name} ({'tap' if tap else 'tun'})"
                + (", responding to echo requests" if args.respond else "")
                + (f", writing {args.write}" if args.write else ""),
                file=sys.stderr,
                flush=True,
            )
            buf = bytearray(65536)
            view = memoryview(buf)
            link = "ether" if tap else "ip"
            while args.count is None or captured < args.count:
                try:
                    n = device.read_into(buf)
                except OSError as exc:  # e.g. the device was deleted under us
                    raise DeviceError(f"reading from {device.name} failed: {exc.strerror}") from None
                now = time.time()
                packet = bytes(view[:n])
                captured += 1
                if not args.quiet:
                    out.write(f"{format_timestamp(now)} {describe_packet(packet, link)}\n")
                    out.flush()
                if pcap is not None:
                    pcap.write(packet, now)
                    stream.flush()
                if args.respond:
                    if tap:
                        reply = tap_reply_for(packet, RESPONDER_MAC, answer_for)
                    else:
                        reply = echo_reply_for(packet)
                    if reply is not None:
                        # Log before writing: once the reply is out, the pinger may stop us.
                        if not args.quiet:
                            out.write(f"{format_timestamp(now)} {describe_packet(reply, link)} (reply)\n")
                            out.flush()
                        if pcap is not None:
                            pcap.write(reply, now)
                        device.write(reply)
                        replies += 1
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{captured} packets captured, {replies} replies sent", file=sys.stderr)
    return 0


def add_sniff_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sniff",
        help="print packets seen on a TUN/TAP device (needs root)",
        description="Print one line per packet read from a TUN/TAP device; optionally answer "
        "pings and write a pcap. Needs root.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--create", metavar="NAME", help="create a device (use '' for a kernel-chosen name)")
    which.add_argument("--attach", "-i", metavar="NAME", help="attach to an existing device")
    p.add_argument("--address", "-A", action="append", metavar="CIDR",
                   help="address for the created device, e.g. 10.9.0.1/24 (repeatable, v4 or v6)")
    p.add_argument("--tap", action="store_true", help="TAP (Ethernet frames) instead of TUN (IP packets)")
    p.add_argument("--mtu", type=int, help="MTU of the created device")
    p.add_argument("--respond", action="store_true",
                   help="answer ICMP/ICMPv6 echo requests (and ARP/ND in TAP mode)")
    p.add_argument("-w", "--write", metavar="FILE.pcap", help="also write packets to a pcap file")
    p.add_argument("-c", "--count", type=int, help="stop after this many packets")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print per-packet lines")
    p.set_defaults(func=run_sniff)
