"""Redis and Redis Cluster: scripts and keys shared by server and publisher, feeds, the session index."""
