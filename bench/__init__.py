"""Benchmarks for sse-progress (bench-only code; nothing here is imported by the service)."""
