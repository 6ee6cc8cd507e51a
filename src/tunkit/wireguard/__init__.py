"""wireguard package."""
