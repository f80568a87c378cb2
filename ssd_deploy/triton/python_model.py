"""Triton Python-backend model for an ssd_deploy ensemble (copied as ``<model>/1/model.py``).

One file serves two stages, chosen by the model config parameter ``stage``:

- ``preprocess``: ``IMAGE`` (BYTES, an encoded JPEG/PNG per batch item) -> the network input
  (FP32 ``[3, S, S]``, resized, mean-subtracted, channel order from the config) and
  ``image_size`` (INT32 ``[2]``: width, height of the original image).
- ``postprocess``: the engine's ``loc``/``conf`` heads and ``image_size`` -> ``boxes`` (FP32
  ``[K, 4]`` in original pixels), ``scores`` (FP32 ``[K]``), ``class_ids`` (INT32 ``[K]``) and
  ``num_detections`` (INT32 ``[1]``); rows past ``num_detections`` are zero padding.

Both read the SSD config (sizes, priors, mean, Detect thresholds) from ``ssd_config.json`` next to
this file and use ssd_deploy's own pre-processing and decode + NMS, so Triton answers exactly
what ``Detector`` answers. The Triton container needs ``ssd_deploy`` importable (numpy and
Pillow are its only needs here): ``pip install --no-deps ssd_deploy && pip install numpy pillow``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

CONFIG_FILE = "ssd_config.json"


def _param(config: dict[str, Any], key: str, default: str | None = None) -> str | None:
    entry = (config.get("parameters") or {}).get(key)
    if not entry:
        return default
    # Triton writes proto field names; accept the camel-case JSON spelling as well.
    return entry.get("string_value", entry.get("stringValue", default))


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    """Pre- or post-processing for SSD, depending on the ``stage`` parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.name = args.get("model_name", "ssd")
        self.stage = _param(self.model_config, "stage")
        if self.stage not in ("preprocess", "postprocess"):
            raise ValueError(
                f"{self.name}: parameter 'stage' must be preprocess or postprocess, got {self.stage!r}"
            )
        try:
            from ssd_deploy.config import SSDConfig
        except ImportError:
            raise ImportError(
                f"{self.name}: the ssd_deploy package is not importable in this Triton container; "
                "pip install --no-deps ssd_deploy && pip install numpy pillow"
            ) from None
        path = os.path.join(args["model_repository"], str(args["model_version"]), CONFIG_FILE)
        with open(path) as f:
            self.config = SSDConfig.from_json(f.read())
        outputs = {o["name"]: o for o in self.model_config.get("output", [])}
        inputs = {i["name"]: i for i in self.model_config.get("input", [])}
        if self.stage == "preprocess":
            from ssd_deploy.preprocess import ImageError, load_image, preprocess

            self._load_image, self._preprocess, self._image_error = load_image, preprocess, ImageError
            self.image_input = _param(self.model_config, "image_input", "IMAGE")
            self.tensor_output = _param(self.model_config, "tensor_output", "images")
            self.max_pixels = int(_param(self.model_config, "max_pixels", "40000000") or 40_000_000)
            self.max_image_bytes = int(_param(self.model_config, "max_image_bytes", "16777216") or 16777216)
            for name in (self.tensor_output, "image_size"):
                if name not in outputs:
                    raise ValueError(f"{self.name}: config has no output {name!r}")
            if self.image_input not in inputs:
                raise ValueError(f"{self.name}: config has no input {self.image_input!r}")
        else:
            from ssd_deploy.postprocess import detect
            from ssd_deploy.priors import prior_boxes

            self._detect = detect
            self.priors = prior_boxes(self.config.prior)
            self.params = self.config.detect
            for name in ("loc", "conf", "image_size"):
                if name not in inputs:
                    raise ValueError(f"{self.name}: config has no input {name!r}")

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.stage == "preprocess":
            return [self._preprocess_one(r) for r in requests]
        return self._postprocess(requests)

    # -- stages ------------------------------------------------------------------------------
    def _preprocess_one(self, request: Any) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, self.image_input)
        if tensor is None:
            return _error(f"{self.name}: missing input {self.image_input}")
        blobs = tensor.as_numpy().reshape(-1)
        images = []
        for i, blob in enumerate(blobs):
            data = blob if isinstance(blob, bytes) else bytes(blob)
            if not data:
                return _error(f"{self.name}: image {i} is empty")
            if len(data) > self.max_image_bytes:
                return _error(
                    f"{self.name}: image {i} has {len(data)} bytes, the limit is {self.max_image_bytes}"
                )
            try:
                images.append(self._load_image(data, max_pixels=self.max_pixels))
            except self._image_error as e:
                return _error(f"{self.name}: image {i}: {e}")
        batch, sizes = self._preprocess(images, self.config)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(self.tensor_output, np.ascontiguousarray(batch, dtype=np.float32)),
            pb_utils.Tensor("image_size", np.asarray(sizes, dtype=np.int32).reshape(-1, 2)),
        ])  # fmt: skip

    def _postprocess(self, requests: list[Any]) -> list[Any]:
        p, c = self.config.num_priors, self.config.num_classes
        responses: list[Any] = [None] * len(requests)
        locs, confs, sizes, owners = [], [], [], []
        for k, request in enumerate(requests):
            tensors = [pb_utils.get_input_tensor_by_name(request, n) for n in ("loc", "conf", "image_size")]
            if any(t is None for t in tensors):
                responses[k] = _error(f"{self.name}: needs inputs loc, conf and image_size")
                continue
            loc, conf, size = (t.as_numpy() for t in tensors)
            n = loc.shape[0] if loc.ndim == 3 else -1
            if loc.shape != (n, p, 4) or conf.shape != (n, p, c) or size.reshape(-1).shape != (2 * n,):
                responses[k] = _error(
                    f"{self.name}: expected loc [N,{p},4], conf [N,{p},{c}], image_size [N,2]; got "
                    f"{list(loc.shape)}, {list(conf.shape)}, {list(size.shape)}"
                )
                continue
            locs.append(loc)
            confs.append(conf)
            sizes.append(size.reshape(n, 2))
            owners.append(k)
        if owners:
            # One decode + NMS over every request Triton batched together.
            dets = self._detect(np.concatenate(locs), np.concatenate(confs), self.priors,
                                self.config.variances, self.params)  # fmt: skip
            start = 0
            for k, size in zip(owners, sizes):
                mine = dets[start : start + len(size)]
                start += len(size)
                responses[k] = self._pack(mine, size)
        return responses

    @staticmethod
    def _pack(dets: list[Any], sizes: np.ndarray) -> Any:
        n = len(dets)
        # Pad every image of the request to its largest count (at least 1 row, so no client
        # has to handle zero-length tensors); num_detections says how many rows are real.
        k = max([1] + [len(d) for d in dets])
        boxes = np.zeros((n, k, 4), np.float32)
        scores = np.zeros((n, k), np.float32)
        classes = np.zeros((n, k), np.int32)
        counts = np.zeros((n, 1), np.int32)
        for i, (d, (w, h)) in enumerate(zip(dets, sizes.tolist())):
            m = len(d)
            counts[i, 0] = m
            if m:
                scaled = d.scaled(float(w), float(h))
                boxes[i, :m] = scaled.boxes
                scores[i, :m] = scaled.scores
                classes[i, :m] = scaled.class_ids
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("boxes", boxes), pb_utils.Tensor("scores", scores),
            pb_utils.Tensor("class_ids", classes), pb_utils.Tensor("num_detections", counts),
        ])  # fmt: skip

    def finalize(self) -> None:
        pass
