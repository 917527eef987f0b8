"""Training engine, data pipeline and configs for the zoo models; `train.fit` from Python.

`import train` stays light: `train.fit` and `train.FitResult` load the engine on first use.
"""

__all__ = ["FitResult", "fit"]
# zoo's `zoo` command (zoo/_entry.py) looks for this name to tell this package from a
# researcher's own train.py that shadows it.
__zoo_train__ = True


def __getattr__(name: str):
    if name in __all__:
        from train import api

        return getattr(api, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
