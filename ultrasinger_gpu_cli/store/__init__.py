"""ugpu's state in SQLite: the schema and its migrations, runs, performance and fallbacks, plans and overrides, the job queue."""
