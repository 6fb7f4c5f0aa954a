"""Channel adapters: the only place that imports platform libraries."""
