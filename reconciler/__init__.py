"""fluxrelay reconciler: consumes stored events and triggers exactly-targeted reconciliations."""
