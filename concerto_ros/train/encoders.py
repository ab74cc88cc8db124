"""The Concerto encoder a training command starts from: the one the node would run.

``node.model.bundle`` (a bundle file or ``default``) gives its encoder; else
``node.model.checkpoint`` (any format :func:`~concerto_ros.models.checkpoint.load_encoder`
reads: released Concerto/Sonata files, Pointcept training checkpoints, bare state dicts with
``node.model.preset``); else the seeded random ``node.model.preset`` the node builds with
``node.model.seed`` -- so "trained vs random" comparisons start from the node's own random
weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["start_encoder"]


def start_encoder(node, device: torch.device, drop_path: float = 0.0,
                  log: Callable[[str], Any] = print) -> tuple[nn.Module, str, str]:
    """The encoder to train, in training mode with a mask token and serialization orders
    re-drawn per forward.

    Args:
        node: the node's :class:`~concerto_ros.config.PerceptionConfig`.
        drop_path: stochastic depth of a random start (ignored for loaded weights).

    Returns:
        ``(encoder, feature layout, description)``; the layout is the bundle's when starting
        from a bundle, else ``node.model.feature``.

    Raises:
        FileNotFoundError: a missing checkpoint or bundle. ValueError: a bundle without a
        Concerto encoder, or one the node would refuse with these settings.
    """
    from concerto_ros.models.bundle import select_bundle
    from concerto_ros.models.checkpoint import encoder_from_dict, load_encoder
    from concerto_ros.models.presets import build_encoder

    m = node.model
    chosen = select_bundle(node, log=None) if str(m.bundle).strip() else None
    no_flash = {"enable_flash": False}
    if chosen is not None:
        bundle, path = chosen
        if bundle.encoder is None:
            raise ValueError(f"node.model.bundle {path} has no Concerto encoder to start from")
        enc = encoder_from_dict(bundle.encoder, source=f"bundle {path}", overrides=no_flash, device="cpu")
        feature, desc = bundle.feature, f"from bundle {path}"
    elif m.checkpoint:
        path = Path(m.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"node.model.checkpoint '{path}' does not exist")
        enc = load_encoder(path, preset=m.preset or None, overrides=no_flash, device="cpu")
        feature, desc = m.feature, f"from {path}"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(m.seed))
            enc = build_encoder(m.preset, mask_token=True, drop_path=float(drop_path), enc_mode=True)
        feature, desc = m.feature, f"random '{m.preset}' (node.model.seed {m.seed})"
    if enc.embedding.mask_token is None:  # released inference files may lack it
        enc.embedding.mask_token = nn.Parameter(torch.zeros(1, enc.config.enc_channels[0]))
        log("the starting encoder has no embedding.mask_token: a new zero mask token is trained")
    enc.config = enc.config.replace(mask_token=True, shuffle_orders=True)
    for p in enc.parameters():
        p.requires_grad_(True)
    return enc.to(device).train(), feature, desc
