"""The pure core: models, ids, the status machine, JSONL validation and retry policy. No I/O."""
