"""Live updates: the hub that fans share events out to viewers, and the Redis relay between replicas."""
