"""What is on the wire: the event envelope and its validation, event ids and resume parsing, SSE frames, tokens."""
