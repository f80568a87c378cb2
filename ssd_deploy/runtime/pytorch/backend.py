"""Run the PyTorch reference SSD behind the :class:`Backend` interface (imports torch lazily)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...config import SSDConfig
from ..backend import Backend, BackendError


class TorchBackend(Backend):
    """The eager reference model. Built from a checkpoint file, or from a config + seed."""

    name = "torch"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        config: SSDConfig | None = None,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError(
                "PyTorch is not installed; the reference backend needs pip install 'ssd_deploy[export]'"
            ) from None
        from ...model import SSD, init_weights, load_weights, model_from_checkpoint

        self._torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        if path is not None:
            self.path = str(path)
            try:
                model, cfg = model_from_checkpoint(path, phase="train")
            except (OSError, ValueError) as e:
                raise BackendError(str(e)) from None
            #: What the checkpoint's format implies (ssd_deploy.model.checkpoint), before any
            #: artifact config replaces it: ssd-check compares the two.
            self.checkpoint_config: SSDConfig | None = cfg
            if config is not None:
                if (config.size, config.num_classes) != (cfg.size, cfg.num_classes):
                    raise BackendError(
                        f"{path}: checkpoint is SSD{cfg.size} with {cfg.num_classes} classes, "
                        f"the artifact under test is SSD{config.size} with {config.num_classes}"
                    )
                # The artifact's config (priors, preprocessing) governs; the checkpoint gives weights.
                model = SSD("train", config)
                init_weights(model, seed=seed)
                load_weights(model, path)
                cfg = config
        else:
            if config is None:
                raise BackendError("TorchBackend needs a checkpoint path or a config")
            self.path = f"<seeded init, seed {seed}>"
            self.checkpoint_config = None
            cfg = config
            model = SSD("train", cfg)
            init_weights(model, seed=seed)
        self.config: SSDConfig = cfg
        self.precision = "fp32"
        self._model = model.eval()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            loc, logits = self._model.forward_heads(torch.from_numpy(np.ascontiguousarray(images)))
            conf = torch.softmax(logits.float(), dim=-1)
        return loc.numpy(), conf.numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "path": self.path,
            "precision": self.precision,
            "torch": self._torch.__version__,
            "threads": self._torch.get_num_threads(),
        }
