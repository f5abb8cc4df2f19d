"""The shared runtime every agentmesh service uses the same way: settings, server bootstrap,
middleware (auth, errors, logs), database, Redis, peers, telemetry, pagination and tiers."""
