"""zoo: the classic PyTorch beginner tutorials' models as a JAX/Flax model zoo.

    import zoo
    zoo.list_models()
    model = zoo.create("cnn")
    variables = zoo.init(model, jax.random.key(0))
    logits = model.apply(variables, images)      # images: float32 NHWC in [0, 1]
    feats = model.apply(variables, images, method="embed")   # the representation before the head
    zoo.list_models("cnn*", pretrained=True)     # filter by pattern / pretrained weights
    zoo.available("cnn")                         # {tag: entry} of its pretrained weights
    batch = zoo.preprocess("cnn", pil_image)     # a picture -> float32 (1, 28, 28, 1), prepared as MNIST digits
    print(zoo.model_card("cnn", "mnist"))        # what the shipped weights record (zoo info cnn.mnist)

    net = zoo.nnx.create("cnn", rngs=nnx.Rngs(0))  # the same model as a native flax.nnx Module

Importing zoo loads only jax, flax.linen and numpy (no TensorFlow, tfds, optax, orbax or
flax.nnx: zoo.nnx is imported on first use).
"""

# The model families. Importing one registers its models and their PyTorch twins and mappings,
# so a new model touches only its family file; a new family file is named here once.
from zoo import autoencoder, cnn, gan, mlp, multitask, rnn
from zoo import cards, finetune, layers
from zoo.cards import model_card, pretrained_inputs, shipped_inputs
from zoo.finetune import param_labels
from zoo.pretrained import available, load, register_pretrained
from zoo.preprocess import preprocess  # the function; the module stays in sys.modules["zoo.preprocess"]
from zoo.registry import (
    InputSpec,
    ModelSpec,
    UnknownModelError,
    create,
    get_spec,
    init,
    list_models,
    param_count,
    register,
)
from zoo.torch_port import from_torch, to_torch, torch_model
from zoo.version import __version__  # noqa: F401 (zoo.__version__)

register_pretrained()  # reads zoo/weights/manifest.json only (no orbax)



def __getattr__(name):
    # zoo.nnx (the NNX modules) imports flax.nnx, which adds to `import zoo`: load it on first use
    if name == "nnx":
        import importlib

        return importlib.import_module("zoo.nnx")
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")

__all__ = [
    "InputSpec",
    "ModelSpec",
    "UnknownModelError",
    "autoencoder",
    "available",
    "cards",
    "cnn",
    "create",
    "finetune",
    "from_torch",
    "gan",
    "get_spec",
    "init",
    "layers",
    "list_models",
    "load",
    "mlp",
    "model_card",
    "multitask",
    "param_count",
    "param_labels",
    "preprocess",
    "rnn",
    "pretrained_inputs",
    "register",
    "shipped_inputs",
    "to_torch",
    "torch_model",
]
