"""Small Keras 3 model builders for the nested-research trainer.

Every builder is a plain function with typed keyword arguments, so a Hydra
config can instantiate it through ``_target_`` (for example
``_target_: nested_research.models.build_cnn``).  The trainer supplies
``input_shape`` and ``num_classes`` from the dataset at build time; every other
argument comes from the config.  Builders return an *uncompiled* functional
``keras.Model`` and raise ``ValueError`` worded ``<param>=<value!r> must be
<what is allowed>`` for bad arguments.  List-valued arguments accept any
non-string sequence, including OmegaConf ``ListConfig``.

One module per model family: :mod:`.mlp`, :mod:`.cnn`, :mod:`.transformer`
(with :class:`PositionEmbedding`); :mod:`.arguments` holds the argument checks
they share.  Layers of the paper's own architecture: :class:`CMS` (:mod:`.cms`, the
Continuum Memory System in token mode) and :class:`HopeBlock` (:mod:`.hope`, a
self-modifying delta-rule memory followed by CMS); the models built from them:
:func:`build_cms_transformer` (:mod:`.cms_transformer`) and :func:`build_hope`
(:mod:`.hope_model`).  The builders and layers are imported
here, so ``nested_research.models.build_*`` stays the name configs and checkpoints record.

Models
------
``build_mlp``
    ``Flatten`` -> ``dense_0 .. dense_{n-1}`` (hidden ``Dense`` layers, default
    ``(128, 128, 64)``, each optionally followed by ``dropout_i``) -> ``logits``.
    For flat feature vectors or small images (e.g. 8x8x1 digits).
``build_cnn``
    A 1-D or 2-D convolutional network chosen from the input rank: ``(L,)`` or
    ``(L, C)`` inputs (e.g. mnist1d signals of length 40) get a ``Conv1D``
    stack, ``(H, W, C)`` images get a ``Conv2D`` stack.  ``conv_0 ..
    conv_{n-1}`` use ``padding="same"``; a max-pool ``pool_i`` (stride 2)
    follows every conv except the last, only along spatial axes that are at
    least 2 long, so the feature map never shrinks below 1.  Then a
    global-average pool (``gap``; or ``gmp`` / ``flatten``, see
    ``global_pool``), ``dense_0`` and ``logits``.
``build_transformer``
    A decoder-style (GPT-like) pre-norm transformer over int token ids of shape
    ``(L,)``: token embedding ``embed`` plus learned position embedding
    ``pos_embed``, then ``num_layers`` blocks ``block{i}_*``::

        h = x + block{i}_attn(block{i}_ln1(x))                   # block{i}_add1
        y = h + block{i}_mlp2(gelu(block{i}_mlp1(block{i}_ln2(h))))  # block{i}_add2

    (``MultiHeadAttention`` with a causal mask when ``causal=True``), a final
    ``final_ln`` and a per-position ``logits`` ``Dense`` giving an output of
    shape ``(batch, L, num_classes)`` for per-position targets (the trainer
    applies a masked sparse categorical cross-entropy).

``build_cms_transformer``
    The Transformer with each block's MLP replaced by a token-mode ``CMS``
    (``block{i}_ln2`` -> ``block{i}_cms`` -> ``block{i}_cms_delta`` ->
    ``block{i}_add2``); ``hidden_units``, ``chunk_sizes`` and
    ``inner_learning_rates`` give its levels.
``build_hope``
    ``embed`` + ``pos_embed``, then per block ``block{i}_ln`` ->
    ``block{i}_hope`` (a ``HopeBlock``: delta-rule memory, then CMS), then
    ``final_ln`` and ``logits``; no attention.

A chunk size longer than the sequence is refused (its level would never update
in context; ``None`` says that); see :func:`.arguments.check_cms_levels`.

Why the depth matters
---------------------
The Nested Learning optimizer assigns every layer that owns trainable weights
an update interval from its depth (distance from the input): shallow layers
and deep layers update at different frequencies.  That scheduling is only
meaningful with several weight-bearing layers at distinct depths, so every
builder produces at least four of them with its defaults: MLP 3 hidden + logits
= 4; CNN 3 convs + dense + logits = 5; transformer embed, pos_embed, per block
ln1 / attn / ln2 / mlp1 / mlp2, final_ln and logits (14 for 2 blocks).  The
layers appear in ``model.layers`` in input-to-output order and carry stable,
readable names, so a variable path such as ``block0_attn/query/kernel`` or
``dense_1/kernel`` identifies its layer and depth for per-layer statistics.

Layer naming
------------
* MLP: ``input``, ``flatten``, ``dense_{i}``, ``dropout_{i}`` (only when
  ``dropout > 0``), ``logits``.
* CNN: ``input``, ``reshape`` (only for ``(L,)`` inputs), ``conv_{i}``,
  ``pool_{i}``, ``gap`` | ``gmp`` | ``flatten``, ``dense_0``, ``dropout_0``
  (only when ``dropout > 0``), ``logits``.
* Transformer: ``tokens``, ``embed``, ``pos_embed``, ``embed_dropout`` (only
  when ``dropout > 0``), per block ``block{i}_ln1``, ``block{i}_attn``,
  ``block{i}_add1``, ``block{i}_ln2``, ``block{i}_mlp1``, ``block{i}_mlp2``,
  ``block{i}_mlp_dropout`` (only when ``dropout > 0``), ``block{i}_add2``; then
  ``final_ln``, ``logits``.  (Keras 3 forbids ``/`` in layer names, hence the
  ``block{i}_`` prefix rather than ``block{i}/``.)
"""

from __future__ import annotations

from typing import Callable

import keras

from nested_research.models.cms import CMS
from nested_research.models.cms_transformer import build_cms_transformer
from nested_research.models.cnn import build_cnn
from nested_research.models.hope import HopeBlock
from nested_research.models.hope_model import build_hope
from nested_research.models.mlp import build_mlp
from nested_research.models.transformer import PositionEmbedding, build_transformer

__all__ = [
    "CMS",
    "HopeBlock",
    "PositionEmbedding",
    "build_mlp",
    "build_cnn",
    "build_transformer",
    "build_cms_transformer",
    "build_hope",
    "MODEL_BUILDERS",
]

MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "transformer": build_transformer,
    "cms_transformer": build_cms_transformer,
    "hope": build_hope,
}
