"""Named systems: each file composes published systems from the policy kinds (cache, prefetch, placement,
precision, routing) and expands into a PolicySet; `--policy NAME` takes them like a cache policy."""
