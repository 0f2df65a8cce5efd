"""The MemOS wire format: request and response models of the REST API."""
