"""Past one machine: the cluster's certificates, and what a worker node needs to join."""
