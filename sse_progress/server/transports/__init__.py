"""The live transports: SSE (with poll mode) and WebSocket; each reads through the hub, never Redis directly."""
