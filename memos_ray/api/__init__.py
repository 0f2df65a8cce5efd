"""HTTP layer: FastAPI routes, auth and error mapping, mounted by the Serve ingress."""
