"""The job side: ``ProgressTracker`` and where its events go (Redis, HTTP, a JSON file, memory). Needs no server."""
