"""PyTorch <-> zoo: from_torch by structure, to_torch, and the PyTorch twins (zoo.torch_model).

Forward parity is checked to 1e-5 (float32): for every registry model both ways through its
twin, for non-default configurations of every family, and for PyTorch modules written the way
the tutorials write them (their own layer names). Round trips zoo -> torch -> zoo are bit-exact.
"""

from __future__ import annotations

import collections
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import zoo  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.torch_port import IGNORED_FIELDS, from_torch, to_torch, torch_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=1e-5, rtol=1e-5)
BATCH = 3


# --- helpers ---------------------------------------------------------------------------------------


def randomize_batchnorm(net: nn.Module) -> nn.Module:
    """Random BatchNorm affine parameters and running stats (torch initializes them to 1/0)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def make_twin(name: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(torch_model(name, **overrides))


def example_input(model, rng: np.random.Generator) -> np.ndarray:
    spec = model.input_spec()
    if spec.dtype == "int32":  # char_lstm tokens
        return rng.integers(0, model.vocab_size, size=(BATCH, 6)).astype(np.int32)
    if isinstance(model, (zoo.gan.DCGAN, zoo.gan.Generator)):
        return rng.standard_normal(spec.example_shape(BATCH)).astype(np.float32)
    return rng.random(spec.example_shape(BATCH)).astype(np.float32)  # [0, 1]


def nchw(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


def nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def assert_same_outputs(model, variables, net: nn.Module, seed: int = 1) -> None:
    """zoo `model.apply(variables, x)` equals `net(x)` to 1e-5 (dcgan: also the discriminator)."""
    rng = np.random.default_rng(seed)
    x = example_input(model, rng)
    xt = torch.from_numpy(x).long() if x.dtype == np.int32 else nchw(x)
    net.eval()
    with torch.no_grad():
        want = net(xt)
    got = jax.jit(model.apply)(variables, x)  # one compile: faster here than eager op by op
    if isinstance(model, (zoo.gan.DCGAN, zoo.gan.Generator)):  # torch keeps the tutorial's tanh range
        want = (want + 1) / 2
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k].numpy(), **TOL, err_msg=k)
    else:
        np.testing.assert_allclose(np.asarray(got), nhwc(want), **TOL)
    if isinstance(model, zoo.gan.DCGAN):
        images = rng.random((BATCH, 28, 28, 1)).astype(np.float32)
        with torch.no_grad():
            want = net.discriminate(nchw(images) * 2 - 1).numpy()  # zoo maps [0, 1] -> [-1, 1] itself
        got = jax.jit(lambda v, x: model.apply(v, x, method="discriminate"))(variables, images)
        np.testing.assert_allclose(np.asarray(got), want, **TOL)


def random_variables(model, seed: int = 0) -> dict:
    """Random variables of the model's shapes (from eval_shape: no init compile, which takes
    seconds per model here), BatchNorm variances positive."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: zoo.init(model, jax.random.key(0)))
    variables = jax.tree.map(lambda s: rng.uniform(-0.2, 0.2, s.shape).astype(np.float32), shapes)
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, variables["batch_stats"])
    return variables


def assert_bit_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def problems(excinfo) -> str:
    return str(excinfo.value)


# --- registry-driven: every model, both ways through its twin -----------------------------------


@pytest.mark.parametrize("name", zoo.list_models())
def test_from_torch_twin_parity(name):
    net = make_twin(name)
    variables = from_torch(name, net.state_dict())
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(isinstance(a, jax.Array) and a.dtype == np.float32 for a in leaves)
    expected = jax.eval_shape(lambda: zoo.init(name, jax.random.key(0)))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, expected)
    assert_same_outputs(zoo.create(name), variables, net)


@pytest.mark.parametrize("name", zoo.list_models())
def test_to_torch_loads_strictly_and_round_trips(name):
    model = zoo.create(name)
    variables = random_variables(model)
    sd = to_torch(name, variables)
    net = torch_model(name)
    assert list(sd) == list(net.state_dict())  # the twin's keys, in its order
    net.load_state_dict(sd, strict=True)
    assert_same_outputs(model, variables, net)
    assert_bit_equal(from_torch(name, sd), variables)
    assert_bit_equal(from_torch(name, net.state_dict()), variables)


# One non-default configuration per family: every field that changes the architecture.
OVERRIDES = [
    ("mlp", dict(in_shape=(8, 8, 3), hidden=(16, 12), num_classes=4)),  # (C, H, W) vs (H, W, C) flatten
    ("mlp_binary", dict(in_shape=(7,), hidden=(), num_classes=1)),
    ("cnn", dict(in_shape=(20, 24, 3), features=(8, 8, 8), num_classes=5)),  # flatten (2, 3, 8), odd sizes floor
    ("lstm", dict(in_shape=(5, 7), hidden=12, num_layers=3, num_classes=4)),
    ("char_lstm", dict(vocab_size=11, embed_dim=6, hidden=10, num_layers=1)),
    ("autoencoder", dict(features=(8, 12), latent=5)),
    ("dcgan", dict(latent_dim=7, g_features=(16, 8), d_features=(8, 16))),
    ("multitask", dict(in_shape=(6, 6, 2), trunk=(12,), heads=(("a", 3), ("b", 3), ("c", 1)))),
]


@pytest.mark.parametrize("name,overrides", OVERRIDES, ids=[n for n, _ in OVERRIDES])
def test_twins_honour_overrides(name, overrides):
    model = zoo.create(name, **overrides)
    net = make_twin(name, seed=2, **overrides)
    assert_same_outputs(model, from_torch(model, net.state_dict()), net)
    variables = random_variables(model, seed=3)
    net.load_state_dict(to_torch(model, variables), strict=True)
    assert_same_outputs(model, variables, net, seed=4)


def test_twins_take_every_architecture_field():
    """No zoo field is silently dropped: each twin takes all of its zoo module's fields."""
    assert {spec.module for spec in map(zoo.get_spec, zoo.list_models())} <= set(registry.torch_modules())
    for zoo_cls in registry.torch_modules():
        twin_cls = registry.torch_spec(zoo_cls).twin()
        fields = {f.name for f in zoo_cls.__dataclass_fields__.values() if f.init} - {"parent", "name"}
        takes = set(inspect.signature(twin_cls).parameters)
        assert fields - IGNORED_FIELDS == takes, zoo_cls.__name__


def test_torch_model_errors(monkeypatch):
    with pytest.raises(zoo.UnknownModelError, match="cnnn"):
        torch_model("cnnn")
    with pytest.raises(TypeError, match="num_clases"):
        torch_model("cnn", num_clases=3)
    with pytest.raises(TypeError, match="need a registry name"):
        torch_model(zoo.create("cnn"), num_classes=3)

    class Wide(zoo.mlp.MLP):  # a zoo field the twin does not know
        width_mult: int = 1

    with pytest.raises(TypeError, match="no PyTorch twin for Wide"):
        torch_model(Wide())
    mlp = registry.torch_spec(zoo.mlp.MLP)

    def wide_twins():  # the MLP twin, without a width_mult option
        return [type("Wide", (mlp.twin(),), {})]

    monkeypatch.setattr(registry, "_TORCH", dict(registry._TORCH))
    monkeypatch.setattr(registry, "_TWIN_CLASSES", dict(registry._TWIN_CLASSES))
    registry.register_torch(Wide, layers=mlp.layers, twins=wide_twins)
    assert isinstance(torch_model(Wide()), mlp.twin())  # left at its default: nothing lost
    with pytest.raises(ValueError, match=r"option 'width_mult' \(expected its default 1, got 2\)"):
        torch_model(Wide(width_mult=2))


def test_register_torch_refuses_a_second_mapping_and_names_a_missing_twin(monkeypatch):
    for table in ("_TORCH", "_TWIN_CLASSES"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    mlp = registry.torch_spec(zoo.mlp.MLP)
    with pytest.raises(ValueError, match="MLP already has a PyTorch mapping"):
        registry.register_torch(zoo.mlp.MLP, layers=mlp.layers, twins=mlp.twins)

    class Narrow(zoo.mlp.MLP):
        pass

    registry.register_torch(Narrow, layers=mlp.layers, twins=lambda: [])
    with pytest.raises(TypeError, match=r"register_torch\(Narrow\): its twins define no class 'Narrow'"):
        torch_model(Narrow())


# --- tutorial-style PyTorch modules: their own names, matched by structure -------------------------


class TutorialMLP(nn.Module):  # the feed-forward net tutorial
    def __init__(self, input_size=784, hidden1=500, hidden2=256, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, num_classes)

    def forward(self, x):
        x = x.reshape(-1, 28 * 28)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


class BinaryClassifier(nn.Module):  # the binary-classifier tutorial
    def __init__(self):
        super().__init__()
        self.layer_1 = nn.Linear(10, 5)
        self.layer_out = nn.Linear(5, 1)

    def forward(self, x):
        return self.layer_out(torch.relu(self.layer_1(x)))


class TutorialCNN(nn.Module):  # the MNIST CNN tutorial, flatten fixed to 64*7*7
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc1(torch.flatten(x, 1))  # 64 * 7 * 7 features


class TutorialRNN(nn.Module):  # the RNN/LSTM MNIST tutorial
    def __init__(self, input_size=28, hidden_size=128, num_layers=2, num_classes=10):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class CharRNN(nn.Module):  # a char-RNN: embedding, LSTM, vocabulary logits
    def __init__(self, vocab=65, embed=64, hidden=256, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.fc(out)


class TutorialAutoencoder(nn.Module):  # encoder / decoder Sequentials
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(True),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(True),
            nn.Conv2d(64, 16, 4), nn.ReLU(True),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(16, 64, 4), nn.ReLU(True),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(True),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x):
        return self.decoder(self.encoder(x))


class NetG(nn.Module):  # the DCGAN tutorial's generator (sized for MNIST)
    def __init__(self, nz=100, ngf=64):
        super().__init__()
        self.nz = nz
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z):
        return self.main(z.view(-1, self.nz, 1, 1))


class NetD(nn.Module):  # the DCGAN tutorial's discriminator (sized for MNIST, returns a logit)
    def __init__(self, ndf=32):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 7, 1, 0),
        )  # fmt: skip

    def forward(self, x):
        return self.main(x).view(-1, 1)


class TutorialMultiTask(nn.Module):  # a shared trunk and one attribute per head
    def __init__(self):
        super().__init__()
        self.shared = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.digit_head = nn.Linear(128, 10)
        self.parity_head = nn.Linear(128, 2)

    def forward(self, x):
        h = self.shared(x)
        return {"digit": self.digit_head(h), "parity": self.parity_head(h)}


def _seeded(make):
    torch.manual_seed(7)
    return randomize_batchnorm(make())


TUTORIAL = {  # test id -> (registry name, module, some of its keys)
    "mlp": ("mlp", lambda: TutorialMLP(), ["fc1.weight", "fc3.bias"]),
    "mlp_small": ("mlp_small", lambda: TutorialMLP(hidden1=128, hidden2=64), ["fc2.weight"]),
    "mlp_binary": ("mlp_binary", lambda: BinaryClassifier(), ["layer_out.weight"]),
    "mlp-sequential": ("mlp", lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 256), nn.ReLU(),
                                  nn.Linear(256, 10)), ["1.weight", "5.bias"]),  # fmt: skip
    "cnn": ("cnn", lambda: TutorialCNN(), ["conv1.weight", "fc1.weight"]),
    "lstm": ("lstm", lambda: TutorialRNN(), ["lstm.weight_ih_l0", "lstm.bias_hh_l1", "fc.weight"]),
    "char_lstm": ("char_lstm", lambda: CharRNN(), ["embed.weight", "rnn.weight_hh_l1"]),
    "autoencoder": ("autoencoder", lambda: TutorialAutoencoder(), ["encoder.4.weight", "decoder.0.weight"]),
    "multitask": ("multitask", lambda: TutorialMultiTask(), ["shared.1.weight", "parity_head.bias"]),
}


@pytest.mark.parametrize("case", TUTORIAL)
def test_tutorial_modules_load_by_structure(case):
    name, make, keys = TUTORIAL[case]
    net = _seeded(make)
    sd = net.state_dict()
    assert set(keys) <= set(sd)  # the test really uses the tutorial's names
    model = zoo.create(name)
    assert_same_outputs(model, from_torch(name, sd), net)


def test_tutorial_dcgan_generator_and_discriminator():
    g, d = _seeded(NetG), _seeded(NetD)
    assert "main.0.weight" in g.state_dict() and "main.3.running_var" in d.state_dict()
    g_model, d_model = zoo.gan.Generator(), zoo.gan.Discriminator()
    g_vars, d_vars = from_torch(g_model, g.state_dict()), from_torch(d_model, d.state_dict())
    assert_same_outputs(g_model, g_vars, g)
    images = np.random.default_rng(0).random((BATCH, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        want = d(nchw(images) * 2 - 1).numpy()
    np.testing.assert_allclose(np.asarray(d_model.apply(d_vars, images)), want, **TOL)

    # Both in one state dict, the discriminator first: the two BatchNorm(64) layers (generator
    # bn_1, discriminator bn_1) tie by kind and shape; order settles it (each follows its conv).
    both = collections.OrderedDict([*((f"netD.{k}", v) for k, v in d.state_dict().items()),
                                    *((f"netG.{k}", v) for k, v in g.state_dict().items())])  # fmt: skip
    variables = from_torch("dcgan", both)
    assert_bit_equal(variables["params"]["generator"], g_vars["params"])
    assert_bit_equal(variables["batch_stats"]["discriminator"], d_vars["batch_stats"])


def test_ties_settled_by_name_then_order():
    model = zoo.create("multitask", heads=(("a", 3), ("b", 3)), trunk=(8,), in_shape=(6,))
    net = _seeded(lambda: torch_model(model))
    # heads stored b first: same kind and shapes, so the names (heads.a / heads.b) decide
    sd = collections.OrderedDict((k, net.state_dict()[k]) for k in
                                 ["shared.0.weight", "shared.0.bias", "heads.b.weight", "heads.b.bias",
                                  "heads.a.weight", "heads.a.bias"])  # fmt: skip
    variables = from_torch(model, sd)
    np.testing.assert_array_equal(variables["params"]["head_a"]["kernel"], sd["heads.a.weight"].numpy().T)
    assert_same_outputs(model, variables, net)

    # four 8x8 Linears under names of no twin: their order decides
    square = zoo.create("mlp", in_shape=(8,), hidden=(8, 8, 8), num_classes=8)
    seq = _seeded(lambda: nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 8)))
    variables = from_torch(square, seq.state_dict())
    np.testing.assert_array_equal(variables["params"]["dense_1"]["kernel"], seq[2].weight.detach().numpy().T)
    assert_same_outputs(square, variables, seq)


# --- strictness: one ValueError listing each key with its expected and found shapes -----------------


def test_wrong_architecture_names_key_and_shapes():
    sd = torch_model("mlp_small").state_dict()
    with pytest.raises(ValueError) as e:
        from_torch("mlp", sd)
    msg = problems(e)
    assert "'fc1.weight'" in msg and "(500, 784)" in msg and "(128, 784)" in msg and "'mlp'" in msg

    with pytest.raises(ValueError, match=r"'conv1\.weight': expected shape \(32, 1, 3, 3\), found \(32, 3, 3, 3\)"):
        from_torch("cnn", torch_model("cnn_cifar").state_dict())


def test_wrong_shape_in_tutorial_module():
    sd = TutorialCNN().state_dict()
    sd["fc1.weight"] = torch.zeros(10, 64 * 6 * 6)  # the tutorial's original flatten size
    with pytest.raises(ValueError) as e:
        from_torch("cnn", sd)
    assert "'fc1.weight': expected shape (10, 3136), found (10, 2304) (for params/head/kernel (3136, 10))" in problems(e)
    assert "conv1" not in problems(e)  # the layers that fit are not listed


def test_missing_and_unexpected_keys():
    sd = dict(torch_model("cnn").state_dict())
    missing = dict(sd)
    del missing["conv2.bias"]
    with pytest.raises(ValueError, match=r"missing key 'conv2\.bias' \(expected shape \(64,\)"):
        from_torch("cnn", missing)
    extra = {**sd, "fc2.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"unexpected key 'fc2\.weight' \(shape \(3, 3\)\)"):
        from_torch("cnn", extra)
    # a bias for a use_bias=False layer is unexpected, num_batches_tracked is not
    gan_sd = {**torch_model("dcgan").state_dict(), "generator.main.0.bias": torch.zeros(256)}
    with pytest.raises(ValueError, match=r"unexpected key 'generator\.main\.0\.bias'"):
        from_torch("dcgan", gan_sd)


def test_missing_layer_lists_its_keys():
    sd = TutorialCNN().state_dict()
    del sd["fc1.weight"], sd["fc1.bias"]
    with pytest.raises(ValueError) as e:
        from_torch("cnn", sd)
    msg = problems(e)
    assert "missing key 'fc.weight' (expected shape (10, 3136), for params/head/kernel (3136, 10)" in msg
    assert "missing key 'fc.bias' (expected shape (10,)" in msg and "zoo.torch_model" in msg


def test_leftover_layer_and_several_problems_in_one_error():
    sd = TutorialCNN().state_dict()
    sd["conv3.weight"], sd["conv3.bias"] = torch.zeros(128, 64, 3, 3), torch.zeros(128)
    sd["conv1.bias"] = torch.zeros(31)
    with pytest.raises(ValueError) as e:
        from_torch("cnn", sd)
    lines = problems(e).splitlines()[1:]
    assert lines == [
        "  'conv1.bias': expected shape (32,), found (31,) (for params/conv_0/bias (32,))",
        "  unexpected key 'conv3.weight' (shape (128, 64, 3, 3))",
        "  unexpected key 'conv3.bias' (shape (128,))",
    ]


def test_ambiguous_pairing_lists_keys_and_candidates():
    # two 8x8 Linears, stored after the head: neither names nor order tell which is dense_0
    model = zoo.create("mlp", in_shape=(8,), hidden=(8, 8), num_classes=3)
    sd = collections.OrderedDict(
        [("out.weight", torch.zeros(3, 8)), ("out.bias", torch.zeros(3)),
         ("x.weight", torch.zeros(8, 8)), ("x.bias", torch.zeros(8)),
         ("y.weight", torch.zeros(8, 8)), ("y.bias", torch.zeros(8))]
    )  # fmt: skip
    with pytest.raises(ValueError) as e:
        from_torch(model, sd)
    msg = problems(e)
    for key, shape in [("x.weight", "(8, 8)"), ("x.bias", "(8,)"), ("y.weight", "(8, 8)"), ("y.bias", "(8,)")]:
        assert f"ambiguous {key!r} (shape {shape}): fits dense_0 ('fc1' in the twin) or dense_1 ('fc2' in the twin) equally" in msg
    assert "'out" not in msg  # the head is unique by shape
    # the twin's names settle it
    named = collections.OrderedDict((k.replace("x.", "fc1.").replace("y.", "fc2."), v) for k, v in sd.items())
    assert set(from_torch(model, named)["params"]) == {"dense_0", "dense_1", "head"}


def test_accepts_plain_arrays():
    sd = {k: v.numpy() for k, v in torch_model("mlp_binary").state_dict().items()}
    variables = from_torch("mlp_binary", sd)
    np.testing.assert_array_equal(variables["params"]["dense_0"]["kernel"], sd["fc1.weight"].T)


def test_to_torch_errors():
    with pytest.raises(ValueError) as e:
        to_torch("mlp", random_variables(zoo.create("mlp_small")))
    assert "params/dense_0/kernel: expected shape (784, 500), found (784, 128)" in problems(e)
    with pytest.raises(ValueError, match="missing batch_stats/generator/bn_0/mean"):
        to_torch("dcgan", {"params": random_variables(zoo.create("dcgan"))["params"]})
    with pytest.raises(TypeError, match="mapping"):
        to_torch("mlp", [1, 2])
    with pytest.raises(TypeError, match="no PyTorch mapping for Dense"):
        to_torch(linen.Dense(3), {})


def test_without_torch_to_torch_gives_numpy():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # import torch now raises ImportError
        "import jax, numpy as np, zoo\n"
        "shapes = jax.eval_shape(lambda: zoo.init('dcgan', jax.random.key(0)))\n"
        "v = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)\n"
        "sd = zoo.to_torch('dcgan', v)\n"
        "assert all(type(a) is np.ndarray for a in sd.values()), {type(a) for a in sd.values()}\n"
        "assert sd['generator.main.1.num_batches_tracked'].dtype == np.int64\n"
        "assert sd['generator.main.0.weight'].shape == (100, 128, 7, 7)\n"
        "back = zoo.from_torch('dcgan', sd)\n"
        "assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(v)))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_import_zoo_does_not_import_torch():
    code = (
        "import sys, numpy as np, zoo, zoo.torch_port\n"
        "sd = {'fc1.weight': np.zeros((5, 10)), 'fc1.bias': np.zeros(5), 'fc2.weight': np.zeros((1, 5)), 'fc2.bias': np.zeros(1)}\n"
        "zoo.from_torch('mlp_binary', sd)\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'optax', 'orbax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# --- the twins' own behaviour --------------------------------------------------------------------


def test_char_lstm_carries_and_generate():
    net = make_twin("char_lstm", seed=5)
    variables = from_torch("char_lstm", net.state_dict())
    model = zoo.create("char_lstm")
    prompt = np.random.default_rng(4).integers(0, 65, size=(2, 5)).astype(np.int32)

    logits, carries = model.apply(variables, prompt, return_carries=True)
    with torch.no_grad():
        t_logits, (h_n, c_n) = net(torch.from_numpy(prompt).long(), return_state=True)
    np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), **TOL)
    for k, (h, c) in enumerate(carries):
        np.testing.assert_allclose(np.asarray(h), h_n[k].numpy(), **TOL)
        np.testing.assert_allclose(np.asarray(c), c_n[k].numpy(), **TOL)

    # Near-zero temperature is greedy decoding; torch decodes greedily step by step from
    # the carried state, checking its logits pick the same token at every step.
    length = 12
    toks = model.apply(variables, jax.random.key(0), prompt, length, 1e-6, method="generate")
    toks = np.array(toks)  # a writable copy (torch.from_numpy below)
    # the same with numpy leaves (e.g. from a checkpoint): generate must not index numpy with tracers
    np_vars = jax.tree.map(np.asarray, variables)
    np_toks = model.apply(np_vars, jax.random.key(0), prompt, length, 1e-6, method="generate")
    np.testing.assert_array_equal(np_toks, toks)
    assert toks.shape == (2, length) and toks.dtype == np.int32
    with torch.no_grad():
        step_logits, state = t_logits[:, -1], (h_n, c_n)
        for i in range(length):
            np.testing.assert_array_equal(toks[:, i], step_logits.argmax(-1).numpy(), err_msg=f"step {i}")
            out, state = net(torch.from_numpy(toks[:, i : i + 1]).long(), state, return_state=True)
            step_logits = out[:, -1]


def test_generator_and_discriminator_apart():
    net = make_twin("dcgan", seed=4)
    g_vars = from_torch(zoo.gan.Generator(), net.generator.state_dict())
    d_vars = from_torch(zoo.gan.Discriminator(), net.discriminator.state_dict())
    z = np.random.default_rng(3).standard_normal((2, 100)).astype(np.float32)
    with torch.no_grad():
        images = (net.generator(torch.from_numpy(z)) + 1) / 2
        logits = net.discriminator(images * 2 - 1).numpy()
    got_images = zoo.gan.Generator().apply(g_vars, z)
    np.testing.assert_allclose(np.asarray(got_images), nhwc(images), **TOL)
    np.testing.assert_allclose(np.asarray(zoo.gan.Discriminator().apply(d_vars, nhwc(images))), logits, **TOL)


def test_twin_parameter_counts():
    """The twins have zoo's parameter counts, plus PyTorch's second LSTM bias (4H per layer)."""
    for name in zoo.list_models():
        net = torch_model(name)
        extra = sum(p.numel() for key, p in net.named_parameters() if re.search(r"\.bias_hh_l\d+$", key))
        n_torch = sum(p.numel() for p in net.parameters())
        assert n_torch == zoo.get_spec(name).num_params + extra, name
        if name in ("lstm", "char_lstm"):  # the derivation above counts what it should
            assert extra == 4 * net.lstm.hidden_size * net.lstm.num_layers > 0, name


def test_dcgan_batchnorm_training_mode_forward_gradients_and_stats():
    """Training mode (batch statistics) as the GAN step uses it: the generator's images, the
    discriminator's logits, every parameter's gradient of a fixed linear loss through both, and the
    updated running means equal the PyTorch twin in train() mode. Running variances differ by
    design: PyTorch folds in the unbiased batch variance, flax the biased one."""
    small = dict(latent_dim=7, g_features=(16, 8), d_features=(8, 16))
    net = make_twin("dcgan", seed=5, **small).train()
    model = zoo.create("dcgan", **small)
    variables = from_torch(model, net.state_dict())
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 7)).astype(np.float32)
    w = rng.standard_normal((6, 1)).astype(np.float32)  # weights of the loss: sum(w * logits)

    def loss(params):
        images, g_state = model.apply({**variables, "params": params}, z, train=True, method="generate", mutable=["batch_stats"])
        logits, d_state = model.apply({**variables, "params": params}, images, train=True, method="discriminate", mutable=["batch_stats"])
        stats = {"generator": g_state["batch_stats"]["generator"], "discriminator": d_state["batch_stats"]["discriminator"]}
        return jnp.sum(w * logits), (images, logits, stats)

    (value, (images, logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])

    t_images = net.generator(torch.from_numpy(z))  # [-1, 1]
    t_logits = net.discriminator(t_images)
    (torch.from_numpy(w) * t_logits).sum().backward()
    np.testing.assert_allclose(np.asarray(images), nhwc((t_images + 1) / 2), **TOL)
    np.testing.assert_allclose(np.asarray(logits), t_logits.detach().numpy(), **TOL)

    # the gradients, as a torch state dict (buffers from the net), converted like weights
    t_grads = {k: p.grad for k, p in net.named_parameters()}
    t_grads.update({k: b for k, b in net.named_buffers()})
    want = from_torch(model, t_grads)["params"]
    for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(want)):
        scale = float(np.max(np.abs(expected))) + 1e-12
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))

    want_stats = from_torch(model, {k: b.detach() for k, b in net.state_dict().items()})["batch_stats"]
    for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(stats)[0], jax.tree.leaves(want_stats)):
        if jax.tree_util.keystr(path).endswith("['mean']"):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), **TOL, err_msg=jax.tree_util.keystr(path))


def test_from_torch_refuses_non_finite_weights():
    """A state dict that diverged in PyTorch gives one error naming the leaf, not NaN variables."""
    net = torch_model("mlp_small")
    state = net.state_dict()
    first = next(iter(state))
    state[first][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"from_torch \(mlp_small\): non-finite weights .*1 NaN"):
        from_torch("mlp_small", state)
