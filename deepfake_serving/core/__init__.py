"""What every layer shares: errors, the schema, naming, formats, limits, threads, batching, observers, digests."""
