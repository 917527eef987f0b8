"""Recurrent models: an LSTM sequence classifier and a character-level LSTM language model.

`lstm` reads an MNIST image row by row: input float32 (B, 28, 28) = (batch, time,
features), output logits (B, 10) from the last time step. `char_lstm` takes int32
tokens (B, T) and returns next-token logits (B, T, vocab_size); `CharLSTM.generate`
samples text.

    from zoo import rnn
    logits = rnn.LSTMClassifier().apply(variables, images[..., 0])

The LSTM keeps one fused input kernel `wi` (F, 4H), one recurrent kernel `wh` (H, 4H)
and ONE bias `b` (4H) per layer, gates in PyTorch's order (i, f, g, o). PyTorch keeps
two biases (b_ih + b_hh) that only ever appear summed, so this model has 4H fewer
parameters per layer than torch.nn.LSTM and computes the same function
(`zoo.from_torch` sums them). The input projection of all time steps is one matmul
outside the recurrence; only h @ wh runs inside `lax.scan`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.registry import InputSpec, check_input, register

# sorted(set(tiny_shakespeare)): the 65 characters of the char_lstm vocabulary.
TINY_SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def encode(text: str, vocab: str = TINY_SHAKESPEARE_VOCAB) -> np.ndarray:
    """Characters -> int32 token ids; raises ValueError naming any character not in `vocab`."""
    table = {ch: i for i, ch in enumerate(vocab)}
    try:
        return np.array([table[ch] for ch in text], np.int32)
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {vocab!r}") from None


def decode(tokens, vocab: str = TINY_SHAKESPEARE_VOCAB) -> str:
    """Token ids -> string."""
    return "".join(vocab[int(t)] for t in np.asarray(tokens).reshape(-1))


def _torch_uniform(hidden: int):
    # torch.nn.LSTM's default: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
    bound = 1.0 / math.sqrt(hidden)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _gates(z):
    """Pre-activations (..., 4H) -> activations i, f, g, o (PyTorch's order)."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def lstm_cell(wh, carry, gates_x):
    """One LSTM step. gates_x: (B, 4H) input projection incl. bias; carry: (h, c)."""
    h, c = carry
    i, f, g, o = _gates(gates_x + h @ wh)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c


def _recurrence_fwd(wh, gates_x, carry):
    def step(carry, gx):  # lstm_cell, keeping the gate activations for the backward pass
        h, c = carry
        i, f, g, o = _gates(gx + h @ wh)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c, jnp.concatenate([i, f, g, o], -1))

    final, (hs, cs, acts) = jax.lax.scan(step, carry, gates_x)
    return (hs, final), (wh, carry, hs, cs, acts)


def _recurrence_bwd(res, cotangents):
    """Backward through time with ONE matmul per step (dh_prev = dgates @ wh^T); the
    recurrent weight gradient is a single (H, T*B) @ (T*B, 4H) matmul after the loop."""
    wh, (h0, c0), hs, cs, acts = res
    d_hs, (d_h, d_c) = cotangents
    h_prev = jnp.concatenate([h0[None], hs[:-1]], 0)  # (T, B, H)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)

    def step(carry, xs):
        dh_next, dc_next = carry
        dh_out, c, cp, a = xs
        i, f, g, o = jnp.split(a, 4, axis=-1)
        dh = dh_out + dh_next
        tc = jnp.tanh(c)
        dc = dc_next + dh * o * (1.0 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], -1)
        return (dz @ wh.T, dc * f), dz

    (d_h0, d_c0), d_z = jax.lax.scan(step, (d_h, d_c), (d_hs, cs, c_prev, acts), reverse=True)
    d_wh = jnp.einsum("tbh,tbg->hg", h_prev, d_z)  # (H, 4H)
    return d_wh, d_z, (d_h0, d_c0)


@jax.custom_vjp
def lstm_recurrence(wh, gates_x, carry):
    """The LSTM recurrence over time.

    Args:
      wh: (H, 4H) recurrent kernel.
      gates_x: (T, B, 4H) input projections of every step, bias included.
      carry: initial (h, c), each (B, H).

    Returns:
      (hs (T, B, H), final carry (h, c)). Same function as scanning `lstm_cell`; its
      gradient is hand-written (see `_recurrence_bwd`), with fewer and larger matmuls
      than autodiff through `lax.scan` (LSTM train step 61 -> 53 ms on the 2-core CPU,
      measured with bench/compare.py's trainer before and after the change).
    """
    return _recurrence_fwd(wh, gates_x, carry)[0]


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class LSTMLayer(nn.Module):
    """A single LSTM layer over (B, T, F) -> outputs (B, T, H), final carry (h, c)."""

    hidden: int

    @nn.compact
    def __call__(self, x, carry=None):
        init = _torch_uniform(self.hidden)
        wi = self.param("wi", init, (x.shape[-1], 4 * self.hidden))
        wh = self.param("wh", init, (self.hidden, 4 * self.hidden))
        b = self.param("b", init, (4 * self.hidden,))
        if carry is None:
            zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
            carry = (zeros, zeros)
        gates_x = jnp.swapaxes(x @ wi + b, 0, 1)  # (T, B, 4H): the recurrence runs over time
        hs, carry = lstm_recurrence(wh, gates_x, carry)
        return jnp.swapaxes(hs, 0, 1), carry  # (B, T, H)


class LSTMClassifier(nn.Module):
    """Stacked LSTM over a sequence; the last step's hidden state feeds a dense head.

    Attributes:
      num_classes: number of logits.
      hidden: LSTM width.
      num_layers: stacked LSTM layers.
      in_shape: (time, features) of one example; MNIST rows: (28, 28).
    """

    num_classes: int = 10
    hidden: int = 128
    num_layers: int = 2
    in_shape: tuple[int, int] = (28, 28)

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "sequences (batch, time, features) in [0, 1]")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        for i in range(self.num_layers):
            x, _ = LSTMLayer(self.hidden, name=f"lstm_{i}")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, -1])  # (B, H) -> (B, classes)


class CharLSTM(nn.Module):
    """Character language model: embedding -> stacked LSTM -> logits over the vocabulary.

    Attributes:
      vocab_size: number of token ids (65 for tiny-shakespeare, see TINY_SHAKESPEARE_VOCAB).
      embed_dim: embedding width.
      hidden: LSTM width.
      num_layers: stacked LSTM layers.
    """

    vocab_size: int = len(TINY_SHAKESPEARE_VOCAB)
    embed_dim: int = 64
    hidden: int = 256
    num_layers: int = 2

    def input_spec(self) -> InputSpec:
        return InputSpec((None,), "int32", f"token ids in [0, {self.vocab_size})")

    @nn.compact
    def __call__(self, tokens, carries=None, *, train: bool = False, return_carries: bool = False):
        """tokens (B, T) -> logits (B, T, vocab_size) [, final carries per layer]."""
        check_input(tokens, self.input_spec(), type(self).__name__)
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)  # (B, T, E)
        carries = carries if carries is not None else (None,) * self.num_layers
        finals = []
        for i in range(self.num_layers):
            x, carry = LSTMLayer(self.hidden, name=f"lstm_{i}")(x, carries[i])
            finals.append(carry)
        logits = nn.Dense(self.vocab_size, name="head")(x)
        return (logits, tuple(finals)) if return_carries else logits

    def generate(self, rng, prompt, length: int, temperature: float = 1.0):
        """Samples `length` tokens after `prompt` (B, P) int32; returns (B, length) int32.

        Call as `model.apply(variables, rng, prompt, length, method="generate")`
        (jit with `static_argnums` for `length`). temperature -> 0 approaches greedy.
        """
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        logits, carries = self(prompt, return_carries=True)
        p = self.variables["params"]

        def step(state, key):
            carries, logits = state
            tok = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)  # (B,)
            x = jnp.take(p["embed"]["embedding"], tok, axis=0)  # also for numpy leaves
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
    num_params=213_258,
    description="2-layer LSTM (128) over the 28 rows of an MNIST image",
    follows="the RNN/LSTM MNIST tutorial (rows as time steps, last step -> dense); "
    "one bias per gate instead of PyTorch's two (1,024 fewer parameters, same function)",
)
register(
    "char_lstm",
    CharLSTM,
    task="language_model",
    output=(None, len(TINY_SHAKESPEARE_VOCAB)),
    num_params=874_881,
    description="char-level LM: embed 64 -> 2-layer LSTM (256) -> 65 logits",
    follows="the char-RNN tutorial (embedding -> LSTM -> vocabulary logits) with a sampling method",
)
