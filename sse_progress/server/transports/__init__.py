"""HTTP and WebSocket routes; each reads through the hub or the engine, never Redis directly."""
