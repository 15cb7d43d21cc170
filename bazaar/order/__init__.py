"""Order replicas: the durable log (`log`), replication decisions (`replication`, pure)
and the running service (`service`)."""
