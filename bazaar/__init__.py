"""Stock Bazaar: a two-tier stock-trading system over a ZeroMQ + msgpack RPC layer."""

# The one place the version is written: pyproject.toml reads it (setuptools'
# dynamic version), so the package metadata, `bazaar --version` and every
# service's `ping` agree. Read here rather than through importlib.metadata,
# which would cost each service ~3.5 MB of imports (email, zipfile, csv).
__version__ = "0.2.0"
