"""The fos agent: lease loop, self-fencing, application supervision, HTTP endpoint and the `fos` CLI."""

__version__ = "0.1.0"
