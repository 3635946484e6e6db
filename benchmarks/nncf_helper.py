"""NNCF side of benchmarks/int_quant.py: NNCF's post-training quantization (its ONNX backend) of an fp32 ONNX model.

Runs inside the benchmark's own environment (benchmarks/.cache-int_quant/venv-nncf: `pip install nncf onnx
onnxruntime`, no torch: NNCF's ONNX backend needs none, and its torch pins never meet the app's .venv); it imports
nothing from compression/. Input: our fp32 ONNX export of a classifier and an .npy of calibration images (float32,
N x C x H x W, exactly the images our int step calibrated on, already normalized as the model reads them). Output:
NNCF's quantized model (QuantizeLinear/DequantizeLinear around int8 weights and uint8/int8 activations, what ONNX
Runtime runs with its int8 kernels), written to OUT. Settings: NNCF's defaults for a CPU target (the "performance"
preset: symmetric weights per channel, symmetric activations; fast bias correction on), subset_size = every
calibration image given. Prints one JSON object as its last line (nncf version, seconds, the settings).

    .cache-int_quant/venv-nncf/bin/python benchmarks/nncf_helper.py MODEL.onnx CALIB.npy OUT.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("calibration")
    parser.add_argument("out")
    args = parser.parse_args()
    import nncf
    import onnx

    logging.getLogger("nncf").setLevel(logging.WARNING)
    model = onnx.load(args.model)
    images = np.load(args.calibration).astype(np.float32)
    name = model.graph.input[0].name
    dataset = nncf.Dataset(list(images), lambda image: {name: image[None]})
    started = time.time()
    quantized = nncf.quantize(model, dataset, subset_size=len(images), target_device=nncf.TargetDevice.CPU,
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    seconds = time.time() - started
    onnx.save(quantized, args.out)
    print(json.dumps({"nncf": nncf.__version__, "onnx": onnx.__version__, "seconds": round(seconds, 2),
                      "calibration_images": len(images), "preset": "performance", "target_device": "CPU",
                      "fast_bias_correction": True}))


if __name__ == "__main__":
    main()
