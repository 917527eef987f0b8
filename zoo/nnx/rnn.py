"""NNX twins of zoo.rnn: `LSTMClassifier` (lstm) and `CharLSTM` (char_lstm, with `generate`).

    from flax import nnx
    from zoo.nnx import rnn
    net = rnn.CharLSTM(rngs=nnx.Rngs(0))
    logits = net(tokens)                                  # (B, T) int32 -> (B, T, 65)
    text = rnn.decode(net.generate(jax.random.key(0), tokens, 200)[0])

Same options, checks and parameter tree as zoo.rnn; the LSTM layers compute with
zoo.layers.lstm_layer (its hand-written backward pass) as the Linen models do.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from zoo import rnn as linen
from zoo.nnx.layers import LSTMLayer, ZooModule, variables
from zoo.registry import check_input
from zoo.rnn import TINY_SHAKESPEARE_VOCAB, decode, encode  # noqa: F401 (the same vocabulary helpers)


class LSTMClassifier(ZooModule):
    """Stacked LSTM over (B, T, F); the last step's hidden state feeds a dense head.
    Options: those of zoo.rnn.LSTMClassifier."""

    linen = linen.LSTMClassifier

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        self.lstm_names = tuple(f"lstm_{i}" for i in range(self.num_layers))
        width = self.in_shape[1]
        for name in self.lstm_names:
            setattr(self, name, LSTMLayer(width, self.hidden, rngs=rngs, **self._kw))
            width = self.hidden
        self.head = nnx.Linear(self.hidden, self.num_classes, rngs=rngs, **self._kw)

    def embed(self, x):
        """Sequences (B, T, F) -> the top layer's hidden state at the last step (B, hidden)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.swapaxes(jnp.asarray(x, self.dtype or jnp.float32), 0, 1)  # (T, B, F)
        for name in self.lstm_names:
            x, _ = getattr(self, name)(x, time_major=True)  # (T, B, H)
        return x[-1]

    def from_embedding(self, h):
        """`embed`'s output -> logits (B, num_classes)."""
        return self.head(h)

    def __call__(self, x):
        return self.from_embedding(self.embed(x))


class _TableAndMethod:
    """`CharLSTM.embed` is both the embedding table's place in the parameter tree ("embed",
    as in Linen) and, read from an instance, the `embed` method (the hidden states): the
    table lives in the instance's __dict__ under that name, where NNX finds its children."""

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj._embed

    def __set__(self, obj, value):
        obj.__dict__["embed"] = value


class CharLSTM(ZooModule):
    """Character LM: embedding -> stacked LSTM -> logits over the vocabulary.
    Options: those of zoo.rnn.CharLSTM. `table` is the nnx.Embed (parameter path "embed")."""

    linen = linen.CharLSTM
    embed = _TableAndMethod()

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        self.embed = nnx.Embed(self.vocab_size, self.embed_dim, rngs=rngs, **self._kw)
        self.lstm_names = tuple(f"lstm_{i}" for i in range(self.num_layers))
        width = self.embed_dim
        for name in self.lstm_names:
            setattr(self, name, LSTMLayer(width, self.hidden, rngs=rngs, **self._kw))
            width = self.hidden
        self.head = nnx.Linear(self.hidden, self.vocab_size, rngs=rngs, **self._kw)

    @property
    def table(self) -> nnx.Embed:
        """The token embedding (the Linen parameter path "embed")."""
        return self.__dict__["embed"]

    def _hidden(self, tokens, carries):
        """tokens (B, T) -> top-layer hidden states (B, T, H), final carries per layer."""
        linen.CharLSTM._check_tokens(self, tokens)  # the Linen checks (spec, id range), on this module's options
        x = self.table(jnp.swapaxes(tokens, 0, 1))  # (T, B, E): time-major through the stack
        carries = carries if carries is not None else (None,) * self.num_layers
        finals = []
        for name, carry in zip(self.lstm_names, carries):
            x, carry = getattr(self, name)(x, carry, time_major=True)
            finals.append(carry)
        return jnp.swapaxes(x, 0, 1), tuple(finals)

    def _embed(self, tokens, carries=None):
        """tokens (B, T) -> the top LSTM layer's hidden state at every step (B, T, hidden)."""
        return self._hidden(tokens, carries)[0]

    def from_embedding(self, h):
        """`embed`'s output -> next-token logits (B, T, vocab_size)."""
        return self.head(h)

    def __call__(self, tokens, carries=None, *, return_carries: bool = False):
        """tokens (B, T) -> logits (B, T, vocab_size) [, final carries per layer]."""
        h, finals = self._hidden(tokens, carries)
        logits = self.from_embedding(h)
        return (logits, finals) if return_carries else logits

    def generate(self, rng, prompt, length: int, temperature: float = 1.0):
        """Samples `length` tokens after `prompt` (B, P) int32; returns (B, length) int32.

        The Linen model's sampler on this module's parameters (same checks, same samples).
        Under `nnx.jit`, mark `length` static.
        """
        return self.to_linen().apply(variables(self), rng, prompt, length, temperature, method="generate")
