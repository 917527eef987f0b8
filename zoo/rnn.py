"""Recurrent models: an LSTM sequence classifier and a character-level LSTM language model.

`lstm` reads an MNIST image row by row: input float32 (B, 28, 28) = (batch, time,
features), output logits (B, 10) from the last time step; `embed` gives that step's
top-layer hidden state (B, hidden). `char_lstm` takes int32 tokens (B, T) and returns
next-token logits (B, T, vocab_size); `embed` gives the top layer's hidden state at every
step (B, T, hidden); `CharLSTM.generate` samples text.

    from zoo import rnn
    logits = rnn.LSTMClassifier().apply(variables, images[..., 0])

The LSTM layer (zoo.layers.LSTMLayer) keeps one bias per gate where PyTorch keeps two that
only ever appear summed: the same function with 4H fewer parameters per layer
(`zoo.from_torch` sums them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.layers import Dtype, LSTMLayer, lstm_cell, lstm_recurrence  # noqa: F401 (lstm_recurrence: importable from its old home)
from zoo.registry import (
    DIGITS,
    MNIST_IMAGES,
    InputSpec,
    check_input,
    check_positive,
    check_positive_tuple,
    register,
    register_torch,
)
from zoo.torch_map import EMBEDDING, LINEAR, LSTM, Layer

# sorted(set(tiny_shakespeare)): the 65 characters of the char_lstm vocabulary.
TINY_SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=8)
def _tables(vocab: str) -> tuple[np.ndarray, np.ndarray]:
    """(byte -> token id, -1 outside the vocabulary; token id -> byte) of an ASCII vocabulary."""
    if not vocab.isascii() or len(set(vocab)) != len(vocab):
        raise ValueError("a vocabulary must hold distinct ASCII characters")
    to_byte = np.frombuffer(vocab.encode("ascii"), dtype=np.uint8)
    to_token = np.full(256, -1, dtype=np.int32)
    to_token[to_byte] = np.arange(len(vocab))
    return to_token, to_byte


def encode(text: str | bytes | np.ndarray, vocab: str = TINY_SHAKESPEARE_VOCAB) -> np.ndarray:
    """Characters -> int32 token ids (one vectorized lookup, fast for a whole corpus).

    Args:
      text: a str, ASCII bytes, or a uint8 byte array (TFDS's tiny_shakespeare "text").
      vocab: the vocabulary, ids in its order.

    Raises:
      ValueError: a character is not in `vocab` (names it and its position).
    """
    if isinstance(text, str):
        if not text.isascii():
            pos = next(i for i, ch in enumerate(text) if not ch.isascii())
            raise ValueError(f"character {text[pos]!r} at position {pos} is not in the vocabulary {vocab!r}")
        text = text.encode("ascii")
    data = np.frombuffer(text, dtype=np.uint8) if isinstance(text, bytes) else np.asarray(text, dtype=np.uint8)
    tokens = _tables(vocab)[0][data]
    if (bad := np.flatnonzero(tokens < 0)).size:
        pos = int(bad[0])
        raise ValueError(f"character {chr(data[pos])!r} at position {pos} is not in the vocabulary {vocab!r}")
    return tokens


def decode(tokens, vocab: str = TINY_SHAKESPEARE_VOCAB) -> str:
    """Token ids (any shape, flattened) -> text; raises ValueError for ids outside [0, len(vocab))."""
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(vocab)):
        raise ValueError(f"token ids must lie in [0, {len(vocab)}), got range [{tokens.min()}, {tokens.max()}]")
    return _tables(vocab)[1][tokens].tobytes().decode("ascii")


def resolve_vocab(owner: str, vocab, vocab_size) -> tuple[str | None, int]:
    """(vocab, vocab_size) of a char model's fields: either may be None (see `CharLSTM`).

    Raises:
      ValueError: `vocab` is not a string of distinct ASCII characters, or disagrees with `vocab_size`.
    """
    if vocab is None:
        if vocab_size is None or vocab_size == len(TINY_SHAKESPEARE_VOCAB):
            return TINY_SHAKESPEARE_VOCAB, len(TINY_SHAKESPEARE_VOCAB)
        return None, vocab_size  # bare token ids: check_positive judges the size
    if not isinstance(vocab, str) or not vocab:
        raise ValueError(f"{owner}: vocab must be a non-empty string of the characters of the token ids, got {vocab!r}")
    if not vocab.isascii():
        bad = next(ch for ch in vocab if not ch.isascii())
        raise ValueError(f"{owner}: vocab must hold ASCII characters only, got {bad!r} at position {vocab.index(bad)}")
    if len(set(vocab)) != len(vocab):
        bad = next(ch for i, ch in enumerate(vocab) if ch in vocab[:i])
        raise ValueError(f"{owner}: vocab must hold distinct characters, {bad!r} appears twice")
    if vocab_size is not None and vocab_size != len(vocab):
        raise ValueError(f"{owner}: vocab_size={vocab_size!r} disagrees with vocab ({len(vocab)} characters); "
                         f"give one of them (vocab_size follows from vocab)")
    return vocab, len(vocab)


def vocab_of(model) -> str:
    """The characters of a char model's token ids; ValueError for a model of bare token ids."""
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        raise ValueError(f"{type(model).__name__} with vocab_size={getattr(model, 'vocab_size', None)} has no "
                         "vocabulary (bare token ids): set its vocab field to the characters of the ids, "
                         "in id order (--set vocab=\"...\"; vocab_size follows)")
    return vocab


class LSTMClassifier(nn.Module):
    """Stacked LSTM over a sequence; the last step's hidden state feeds a dense head.

    Attributes:
      num_classes: number of logits.
      hidden: LSTM width.
      num_layers: stacked LSTM layers (>= 1).
      in_shape: (time, features) of one example; MNIST rows: (28, 28).
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.

    Float input of any precision (float16, bfloat16, ...) is cast to the computation dtype.
    """

    num_classes: int = 10
    hidden: int = 128
    num_layers: int = 2
    in_shape: tuple[int, int] = (28, 28)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        check_positive(owner, num_classes=self.num_classes, hidden=self.hidden, num_layers=self.num_layers)
        check_positive_tuple(owner, "in_shape", self.in_shape, length=2)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "sequences (batch, time, features) in [0, 1]")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.layers = [LSTMLayer(self.hidden, name=f"lstm_{i}", **kw) for i in range(self.num_layers)]
        self.head = nn.Dense(self.num_classes, name="head", **kw)

    def embed(self, x, *, train: bool = False):
        """Sequences (B, T, F) -> the top layer's hidden state at the last step (B, hidden)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.swapaxes(jnp.asarray(x, self.dtype or jnp.float32), 0, 1)  # (T, B, F)
        for layer in self.layers:
            x, _ = layer(x, time_major=True)  # (T, B, H)
        return x[-1]

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> logits (B, num_classes)."""
        return self.head(h)

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


class CharLSTM(nn.Module):
    """Character language model: embedding -> stacked LSTM -> logits over the vocabulary.

    Attributes:
      vocab: the characters of the token ids, in id order (distinct ASCII); None (the default):
        TINY_SHAKESPEARE_VOCAB, unless `vocab_size` alone names another size, which gives a
        model of bare token ids (no characters: text sampling asks for a vocab).
      vocab_size: number of token ids; None (the default): len(vocab). Kept so configs and
        exports that set it keep working; given with `vocab`, it must equal len(vocab).
      embed_dim: embedding width (the embedding table's parameter path is "embed").
      hidden: LSTM width.
      num_layers: stacked LSTM layers (>= 1).
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.

    Raises ValueError for token ids outside [0, vocab_size) whenever the tokens are concrete
    values (eager calls); inside `jax.jit` they are not checked (no cost in a jitted step).
    """

    vocab_size: int | None = None
    embed_dim: int = 64
    hidden: int = 256
    num_layers: int = 2
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    vocab: str | None = None

    def __post_init__(self):
        # resolved once here, so clones, NNX twins and manifests see both fields set and agreeing
        vocab, size = resolve_vocab(type(self).__name__, self.vocab, self.vocab_size)
        object.__setattr__(self, "vocab", vocab)
        object.__setattr__(self, "vocab_size", size)
        check_positive(
            type(self).__name__,
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            hidden=self.hidden,
            num_layers=self.num_layers,
        )
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec((None,), "int32", f"token ids in [0, {self.vocab_size})")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embedding = nn.Embed(self.vocab_size, self.embed_dim, name="embed", **kw)
        self.layers = [LSTMLayer(self.hidden, name=f"lstm_{i}", **kw) for i in range(self.num_layers)]
        self.head = nn.Dense(self.vocab_size, name="head", **kw)

    def _check_tokens(self, tokens) -> None:
        check_input(tokens, self.input_spec(), type(self).__name__)
        if isinstance(tokens, jax.core.Tracer):  # traced (jit): values unknown, not checked
            return
        t = np.asarray(tokens)
        bad = (t < 0) | (t >= self.vocab_size)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{type(self).__name__} expects token ids in [0, {self.vocab_size}); "
                f"got {int(t[where])} at index {where}."
            )

    def _hidden(self, tokens, carries):
        """tokens (B, T) -> top-layer hidden states (B, T, H), final carries per layer."""
        self._check_tokens(tokens)
        x = self.embedding(jnp.swapaxes(tokens, 0, 1))  # (T, B, E): time-major through the stack
        carries = carries if carries is not None else (None,) * self.num_layers
        finals = []
        for layer, carry in zip(self.layers, carries):
            x, carry = layer(x, carry, time_major=True)
            finals.append(carry)
        return jnp.swapaxes(x, 0, 1), tuple(finals)

    def embed(self, tokens, carries=None, *, train: bool = False):
        """tokens (B, T) -> the top LSTM layer's hidden state at every step (B, T, hidden)."""
        return self._hidden(tokens, carries)[0]

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> next-token logits (B, T, vocab_size)."""
        return self.head(h)

    def __call__(self, tokens, carries=None, *, train: bool = False, return_carries: bool = False):
        """tokens (B, T) -> logits (B, T, vocab_size) [, final carries per layer]."""
        h, finals = self._hidden(tokens, carries)
        logits = self.from_embedding(h, train=train)
        return (logits, finals) if return_carries else logits

    def generate(self, rng, prompt, length: int, temperature: float = 1.0):
        """Samples `length` tokens after `prompt` (B, P) int32; returns (B, length) int32.

        Call as `model.apply(variables, rng, prompt, length, method="generate")`
        (jit with `static_argnums` for `length`). temperature -> 0 approaches greedy.
        Raises ValueError for length < 1 and (eagerly) for prompt ids outside the vocabulary.
        """
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        logits, carries = self(prompt, return_carries=True)
        compute = logits.dtype
        # the sampling loop reads the parameters directly (also works for numpy leaves)
        p = jax.tree.map(lambda a: jnp.asarray(a, compute), self.variables["params"])

        def step(state, key):
            carries, logits = state
            tok = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)  # (B,)
            x = jnp.take(p["embed"]["embedding"], tok, axis=0)
            new = []
            for i in range(self.num_layers):
                layer = p[f"lstm_{i}"]
                carry = lstm_cell(layer["wh"], carries[i], x @ layer["wi"] + layer["b"])
                new.append(carry)
                x = carry[0]
            logits = x @ p["head"]["kernel"] + p["head"]["bias"]
            return (tuple(new), logits), tok

        _, toks = jax.lax.scan(step, (carries, logits[:, -1]), jax.random.split(rng, length))
        return jnp.swapaxes(toks, 0, 1).astype(jnp.int32)


register(
    "lstm",
    LSTMClassifier,
    task="sequence_classification",
    output=(10,),
    embedding=(128,),
    num_params=213_258,
    description="2-layer LSTM (128) over the 28 rows of an MNIST image",
    follows="the RNN/LSTM MNIST tutorial (rows as time steps, last step -> dense); "
    "one bias per gate instead of PyTorch's two (1,024 fewer parameters, same function)",
    class_names=DIGITS,
    preprocessing={
        "shape": (28, 28),
        "layout": "(batch, time, features): the rows of an MNIST image, images[..., 0] of NHWC",
        "dtype": "float32",
        "range": (0.0, 1.0),
        "polarity": MNIST_IMAGES["polarity"],
    },
)
register(
    "char_lstm",
    CharLSTM,
    task="language_model",
    output=(None, len(TINY_SHAKESPEARE_VOCAB)),
    embedding=(None, 256),
    num_params=874_881,
    description="char-level LM: embed 64 -> 2-layer LSTM (256) -> 65 logits",
    follows="the char-RNN tutorial (embedding -> LSTM -> vocabulary logits) with a sampling method",
    class_names=tuple(TINY_SHAKESPEARE_VOCAB),
    preprocessing={
        "shape": (None,),
        "dtype": "int32",
        "tokens": "character ids in TINY_SHAKESPEARE_VOCAB order: zoo.rnn.encode(text)",
        "vocab": TINY_SHAKESPEARE_VOCAB,
    },
)


# --- PyTorch: the twins (torch is imported only when one is built) and their layers ----------


def _torch_twins():
    from torch import nn

    class LSTMClassifier(nn.Module):
        """nn.LSTM over (B, T, F) (batch_first) -> Linear on the last step. Keys lstm, fc."""

        def __init__(self, *, num_classes: int, hidden: int, num_layers: int, in_shape):
            super().__init__()
            self.lstm = nn.LSTM(in_shape[1], hidden, num_layers=num_layers, batch_first=True)
            self.fc = nn.Linear(hidden, num_classes)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    class CharLSTM(nn.Module):
        """Embedding -> nn.LSTM (batch_first) -> Linear over the vocabulary. Keys embedding, lstm, fc."""

        def __init__(self, *, vocab_size: int, embed_dim: int, hidden: int, num_layers: int, vocab=None):
            super().__init__()  # vocab: the ids' characters, no part of the network
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
            self.fc = nn.Linear(hidden, vocab_size)

        def forward(self, tokens, state=None, return_state: bool = False):
            """tokens (B, T) int64 -> logits (B, T, vocab) [, (h_n, c_n) each (layers, B, H)]."""
            out, state = self.lstm(self.embedding(tokens), state)
            logits = self.fc(out)
            return (logits, state) if return_state else logits

    return [LSTMClassifier, CharLSTM]


def _lstm_stack(num_layers: int) -> list[Layer]:
    """The stacked layers of one nn.LSTM: its keys carry "_l{k}"."""
    return [Layer("lstm", (f"lstm_{k}",), LSTM, tag=f"_l{k}") for k in range(num_layers)]


def _classifier_torch_layers(m: LSTMClassifier) -> list[Layer]:
    return _lstm_stack(m.num_layers) + [Layer("fc", ("head",), LINEAR)]


def _char_lstm_torch_layers(m: CharLSTM) -> list[Layer]:
    return [Layer("embedding", ("embed",), EMBEDDING)] + _lstm_stack(m.num_layers) + [Layer("fc", ("head",), LINEAR)]


register_torch(LSTMClassifier, layers=_classifier_torch_layers, twins=_torch_twins)
register_torch(CharLSTM, layers=_char_lstm_torch_layers, twins=_torch_twins)
