"""Store roles: one interface each, one file per backend."""
