"""Ingester: the local query-based ExampleGen on the SQLite warehouse
(BigQueryExampleGen in production)."""
