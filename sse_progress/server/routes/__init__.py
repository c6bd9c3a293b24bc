"""Request/response endpoints that are not live streams: publish, snapshot, ops, sessions, legacy."""
