"""The HTTP route modules: the distribution API, the management API, archives, OpenAPI, the guard."""
