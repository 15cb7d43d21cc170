"""Stock Bazaar: a two-tier stock-trading system over a ZeroMQ + msgpack RPC layer."""

__version__ = "0.1.0"
