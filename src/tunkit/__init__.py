"""tunkit: a Linux TUN/TAP networking toolkit.

Pure protocol cores live in ``tunkit.packet``, ``tunkit.p2p``, ``tunkit.wireguard`` and
``tunkit.proxy``; they never touch the clock, sockets or file descriptors.  Everything that
does I/O lives in ``tunkit.io`` and ``tunkit.services``.  ``tunkit.cli`` is the one entry point.
"""

__version__ = "0.1.0"
