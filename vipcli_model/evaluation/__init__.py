"""Evaluation: the field's outpainting benchmark protocol and its metrics (`vip eval`).

- ``protocol``: the 192x192 settings (standard 2.25x, 5x, 11.7x, custom) and sharding;
- ``inception``: the FID Inception network as pytorch-fid runs it, and its weights;
- ``metrics``: FID, KID, IS, PSNR, SSIM as the reference implementations compute them;
- ``perceptual``: LPIPS and the CLIP score (optional networks);
- ``settings``: ``EvalConfig``, ``ScoreConfig``, the prompt settings and the prompts file;
- ``generation``: the test images, their keys and seeds, and the outputs, generated resumably;
- ``scoring``: every metric of every setting, written to results.json and per_image.csv;
- ``runner``: ``run_eval``, generation then scoring (and the names above, re-exported).

Heavy modules load on first use: importing this package imports no network code.
"""

from __future__ import annotations

from vipcli_model.evaluation.protocol import PROTOCOL_NAMES, PROTOCOLS, EvalProtocol, resolve_protocol, shard

__all__ = ["PROTOCOLS", "PROTOCOL_NAMES", "EvalProtocol", "resolve_protocol", "shard"]
