"""The package version, in its own module so that what records it (export manifests) need not import zoo."""

__version__ = "0.1.0"
