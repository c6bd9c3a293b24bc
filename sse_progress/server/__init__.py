"""The HTTP service (installed with the ``server`` extra): app, hub, transports, routes, auth, ops."""
