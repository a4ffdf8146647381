"""Running batches: the upstream client, the per-line runner, submission and finalization."""
