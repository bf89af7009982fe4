"""cloudsession: a self-hostable share server for opencode sessions."""

__version__ = "0.1.0"
