"""Custom events: the schema registry in PostgreSQL, its snapshot for applications, failed events and
their replay (docs/custom-events.md). The pure rules live in ``instrumentation/custom_schemas.py``."""
