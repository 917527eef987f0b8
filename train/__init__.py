"""Training engine, data pipeline and configs for the zoo models; `train.fit` from Python.

`import train` stays light: `train.fit` and `train.FitResult` load the engine on first use.
"""

__all__ = ["FitResult", "fit"]


def __getattr__(name: str):
    if name in __all__:
        from train import api

        return getattr(api, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
