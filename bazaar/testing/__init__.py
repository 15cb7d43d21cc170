"""Test support shared by tests/ and bench/: ports, waiting, keys, the process cluster, fakes.

Nothing here is imported by a service; nothing here imports pytest (bench/
runs it outside pytest). pytest-specific wrappers (`pytest.fail`, fixtures)
live in tests/conftest.py and tests/system/conftest.py.

Modules: `ports` (free_port), `waiting` (wait_until that fails fast when a
watched process dies), `keys` (one CurveZMQ key set per run), `cluster` (the
five services as processes), `http_client` (one JSON request), `fake_catalog`
(an RPC server with the catalog's contract), `frontend_fakes` (in-process
stand-ins for the front end's collaborators), `traders` (trading sessions and
the SPEC section 4 checks), `procs` (what /proc says of a process),
`makerun` (`make run` as a user runs it: one run-all in a directory, its
data in ./data), `browser` (chromium's path and its offline flags).
"""

from bazaar.catalog.market import DEFAULT_QUANTITY, DEFAULT_STOCKS

# The four stocks the tests and benchmarks trade: the first of the default market.
STOCKS = tuple(name for name, _price in DEFAULT_STOCKS[:4])
START_QUANTITY = DEFAULT_QUANTITY
