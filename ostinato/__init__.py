"""ostinato: the distributed learning store for AI job orchestrators."""

__version__ = "0.1.0"
