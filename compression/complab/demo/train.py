"""Train the built-in demo classifiers on scikit-learn's digits and write them to assets/.

    python -m complab.demo.train [--models lenet300 lenet5 vgg_small] [--out assets]

Writes `<name>.safetensors` per model and `model_card.json` + `MODEL_CARD.md` (accuracy on the fixed
validation and test splits, parameters, FLOPs, fp32 bytes, the command). Seeded and CPU-only, so the
same command gives the same weights on the same software; a few minutes on a 2-core laptop.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from complab import metrics
from complab.data import load_data
from complab.methods.finetune import TrainConfig, train
from complab.models.zoo import DEMO_MODELS
from complab.paths import ASSETS

# Per-model recipes: enough epochs to converge on 1,078 training images; shifts of 2 pixels help the
# upsampled 8x8 digits generalise.
RECIPES = {
    "lenet300": TrainConfig(epochs=60, lr=1e-3, weight_decay=1e-4, batch_size=64, shift_pixels=2, seed=0),
    "lenet5": TrainConfig(epochs=40, lr=1e-3, weight_decay=1e-4, batch_size=64, shift_pixels=2, seed=0),
    "vgg_small": TrainConfig(epochs=30, lr=2e-3, weight_decay=1e-4, batch_size=64, shift_pixels=2, seed=0),
}


def train_demo(name: str, out: Path) -> dict:
    spec = DEMO_MODELS[name]
    torch.manual_seed(0)
    model = spec.build(10)
    data = load_data("digits", input_size=spec.input_shape[-1])
    start = time.time()
    train(model, data.train, RECIPES[name])
    seconds = time.time() - start
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / spec.weights_file))
    card = {
        "name": name,
        "description": spec.description,
        "input_shape": list(spec.input_shape),
        "val_accuracy": metrics.accuracy(model, data.loader("val")),
        "test_accuracy": metrics.accuracy(model, data.loader("test")),
        **metrics.model_summary(model, spec.input_shape),
        "train_seconds": round(seconds, 1),
        "recipe": RECIPES[name].__dict__,
    }
    print(json.dumps(card))
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), choices=list(DEMO_MODELS))
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card_path = args.out / "model_card.json"
    cards = json.loads(card_path.read_text()) if card_path.exists() else {}
    for name in args.models:
        cards[name] = train_demo(name, args.out)
    cards["_meta"] = {
        "command": "python -m complab.demo.train",
        "data": "scikit-learn digits, 1,797 images, fixed seeded split 60/20/20 (train 1078, val 359, test 360)",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    card_path.write_text(json.dumps(cards, indent=2) + "\n")
    lines = ["# Demo model card", "", f"Made by `{cards['_meta']['command']}` on {cards['_meta']['data']}.", "",
             "| model | val acc | test acc | params | FLOPs | fp32 bytes | train s |", "|---|---|---|---|---|---|---|"]
    for key, card in cards.items():
        if key.startswith("_"):
            continue
        lines.append(f"| {key} | {card['val_accuracy']:.4f} | {card['test_accuracy']:.4f} | {card['params']:,} | "
                     f"{card['flops']:,} | {card['fp32_bytes']:,} | {card['train_seconds']} |")
    (args.out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
