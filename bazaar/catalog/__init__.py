"""The catalog service: the market (stocks, quantities, volumes) and the one place trades happen.

`store` owns the market, its files and the trade rules (no sockets);
`service` puts it on the RPC server and publishes cache invalidations.
"""
