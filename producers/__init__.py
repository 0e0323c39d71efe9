"""The runner-side client: publish, scrub, batch, spool, rate limits, preflight reads, broadcasts."""
