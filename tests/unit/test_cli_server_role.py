"""`bazaar call` finds the role of the service it calls from BAZAAR_* (commands._server_role)."""

from bazaar import config
from bazaar.commands import _server_role

ONE_HOST = config.from_env({})  # the defaults: one port per replica on 127.0.0.1
HOSTS = config.from_env(
    {
        "BAZAAR_CATALOG": "tcp://catalog-0.catalog:5555",
        "BAZAAR_ORDER_REPLICAS": ",".join(f"{i + 1}=tcp://order-{i}.order:5561" for i in range(3)),
    }
)


def test_by_endpoint_then_by_port():
    assert _server_role(ONE_HOST, "tcp://127.0.0.1:5562") == "order2"
    assert _server_role(ONE_HOST, "tcp://localhost:5563") == "order3"  # by port
    assert _server_role(ONE_HOST, "tcp://127.0.0.1:5555") == "catalog"
    assert _server_role(ONE_HOST, "tcp://127.0.0.1:9") is None


def test_a_port_shared_by_replicas_on_separate_hosts_names_no_one():
    assert _server_role(HOSTS, "tcp://order-1.order:5561") == "order2"
    # Another spelling of a replica's host: the shared port cannot tell which.
    assert _server_role(HOSTS, "tcp://order-1.order.bazaar.svc:5561") is None
    assert _server_role(HOSTS, "tcp://10.0.0.7:5555") == "catalog"
