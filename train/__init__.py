"""Training loop, data pipeline and configs for the zoo models."""
