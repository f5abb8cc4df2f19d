"""In-memory fakes of the protocols the services' service.py declare (one fake per protocol, one module
per service), so a service rule is tested without PostgreSQL, Redis or gRPC."""
