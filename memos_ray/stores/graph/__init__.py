"""Graph store: memory nodes and edges."""
