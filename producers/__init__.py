"""The runner-side client: publish, scrub, batch, spool, rate limits, preflight reads, broadcasts.

This package never imports ``ostinato.workers``: a runner installs it without the worker's weight and sends
tasks by name.
"""

from ostinato.producers.client import BeforeSend, Client

__all__ = ["BeforeSend", "Client"]
