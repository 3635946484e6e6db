"""Batch-norm statistics after compression: re-estimated as a cumulative average, nothing else disturbed.

The end-to-end check: a torchvision MobileNetV3-small (batch-norm momentum 0.01) trained on the digits,
pruned to 70% with fine-tuning, must keep its accuracy on the decoded file. Without the re-estimation it
fell to chance (16.1% with a 70%-pruning plan, 31.7% with this test's).
"""

import pytest
import torch
import torchvision
from complab.data import DataBundle, load_data
from complab.methods import bn_stats, prune
from complab.methods.context import StepContext
from complab.methods.task import ClassifierTask
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=0.01)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


def test_reestimate_is_the_average_over_batches_and_restores_everything():
    torch.manual_seed(0)
    model = ConvBN().eval()
    model.drop.train()  # a mixed state must come back as it was
    prune.apply_masks(model, {"conv": (torch.rand_like(model.conv.weight) > 0.5).float()})
    mask = model.conv.parametrizations.weight[0].mask.clone()
    weight = model.conv.weight.detach().clone()
    batches = [torch.randn(8, 1, 6, 6) for _ in range(3)]
    assert bn_stats.reestimate(model, batches) == 3
    with torch.no_grad():
        outputs = [model.conv(b) for b in batches]
    expected_mean = torch.stack([o.mean((0, 2, 3)) for o in outputs]).mean(0)
    expected_var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    assert torch.allclose(model.bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var, expected_var, atol=1e-5)
    assert model.bn.momentum == 0.01
    assert not model.training and not model.bn.training and model.drop.training
    assert parametrize.is_parametrized(model.conv, "weight")
    assert torch.equal(model.conv.parametrizations.weight[0].mask, mask)
    assert torch.equal(model.conv.weight, weight)


def test_reestimate_skips_single_images_and_keeps_statistics_when_nothing_is_usable():
    model = ConvBN()
    before = model.bn.running_mean.clone()
    assert bn_stats.reestimate(model, [torch.randn(1, 1, 6, 6)]) == 0
    assert torch.equal(model.bn.running_mean, before) and model.bn.momentum == 0.01
    assert bn_stats.reestimate(nn.Linear(2, 2), [torch.randn(4, 2)]) == 0  # no batch norm: nothing to do


def test_finetune_reestimates_even_without_epochs(digits28):
    model = ConvBN()
    data = DataBundle("d", TensorDataset(torch.randn(40, 1, 6, 6) * 3 + 2, torch.zeros(40, dtype=torch.long)),
                      digits28.val, digits28.test, 3, (1, 6, 6), (0.0,), (1.0,))
    ctx = StepContext(data=data, layers=["conv", "fc"])
    ctx.finetune(model, 0, 1e-3, 0, "test")
    assert ctx.bn_reestimations == 1
    assert float(model.bn.running_mean.abs().sum()) > 0.1  # moved from the initial zeros in one call
    assert model.bn.momentum == 0.01 and model.bn.num_batches_tracked.item() == 1


def test_a_task_that_keeps_its_training_statistics_is_reestimated_only_without_training(digits28):
    """A detector keeps the statistics its fine-tuning kept (re-estimating them cost the demo YOLO 5 points of
    mAP50-95); after a change with no training (0 epochs) they are still re-estimated."""
    model = ConvBN()
    data = DataBundle("d", TensorDataset(torch.randn(40, 1, 6, 6) * 3 + 2, torch.zeros(40, dtype=torch.long)),
                      digits28.val, digits28.test, 3, (1, 6, 6), (0.0,), (1.0,))
    trained = []

    class KeepsItsStatistics(ClassifierTask):
        reestimate_after_training = False

        def train(self, model, *, epochs, lr, seed, progress=None, should_stop=None, ema=None):
            trained.append(epochs)
            model.bn.running_mean.fill_(7.0)  # what a training loop leaves in the running statistics

    ctx = StepContext(data=data, layers=["conv", "fc"], task=KeepsItsStatistics(data))
    ctx.finetune(model, 2, 1e-3, 0, "test")
    assert trained == [2] and ctx.bn_reestimations == 0 and torch.all(model.bn.running_mean == 7.0)
    ctx.finetune(model, 0, 1e-3, 0, "test")
    assert trained == [2] and ctx.bn_reestimations == 1 and not torch.all(model.bn.running_mean == 7.0)


def test_sensitivity_report_says_batch_norm_was_reestimated(lenet5):
    from complab.analysis.sensitivity import SensitivityConfig, analyze
    from complab.models.handle import load_model

    vgg = load_model("demo:vgg_small")
    data = load_data("digits", input_size=32)
    config = SensitivityConfig(sparsities=(0.0, 0.9), n_clusters=(4,), bits=(), val_size=64, bn_batches=2)
    before = {k: v.clone() for k, v in vgg.model.state_dict().items()}
    report = analyze(vgg, data, config)
    assert report.config["batch_norm"]["reestimated"] and report.config["batch_norm"]["images"] == 128
    first = next(iter(report.layers.values()))
    assert first["sparsity"]["0.0"] == report.base_accuracy  # an unchanged weight keeps the original statistics
    assert all(torch.equal(v, before[k]) for k, v in vgg.model.state_dict().items())
    lenet = analyze(lenet5, load_data("digits", input_size=28),
                    SensitivityConfig(sparsities=(0.5,), n_clusters=(4,), bits=(), val_size=32))
    assert not lenet.config["batch_norm"]["reestimated"]


def digits_rgb(size: int = 32) -> DataBundle:
    digits = load_data("digits", input_size=size)

    def rgb(split):
        images, labels = split.tensors
        return TensorDataset(images.repeat(1, 3, 1, 1), labels)

    return DataBundle("digits", rgb(digits.train), rgb(digits.val), rgb(digits.test), 10, (3, size, size),
                      digits.mean * 3, digits.std * 3, digits.class_names, shift_pixels=digits.shift_pixels)


@pytest.fixture(scope="module")
def trained_mobilenet(tmp_path_factory):
    """A torchvision MobileNetV3-small trained on the 32-px digits in the test (~25 s on 2 cores), as a handle."""
    from complab.methods.finetune import TrainConfig, train
    from complab.models.handle import load_model

    data = digits_rgb()
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    train(model, data.train, TrainConfig(epochs=3, lr=3e-3, seed=0, shift_pixels=2))
    bn_stats.reestimate_on(model, data.train)  # momentum 0.01: 51 steps leave the running statistics far behind
    path = tmp_path_factory.mktemp("mnv3") / "mobilenet_v3_small.pt"
    torch.save(model.state_dict(), path)
    return load_model("torchvision:mobilenet_v3_small", weights=path, input_size=32), data


@pytest.mark.slow  # trains a MobileNetV3 (3 epochs) and fine-tunes it: the accuracy needs the epochs
def test_pruned_mobilenet_v3_keeps_accuracy_on_the_decoded_file(trained_mobilenet, tmp_path):
    """Prune 70% + 2 epochs of fine-tuning: within 3 points of the unpruned model, measured on the decoded file.

    Measured: 90.8% -> 90.6%; with the re-estimation switched off the same plan gives 31.7% (14.2% in two
    rounds of one epoch; chance is 10%).
    The depthwise 3x3 convolutions (4% of the weights, 9 per channel) are left dense, as a plan would.
    """
    from complab.pipeline import compress
    from complab.plan import Plan, PruneStep

    handle, data = trained_mobilenet
    depthwise = {name: 0.0 for name, module in handle.model.named_modules()
                 if isinstance(module, nn.Conv2d) and module.groups > 1}
    plan = Plan(steps=(PruneStep(sparsity={"_default": 0.7, **depthwise}, iterations=1, finetune_epochs=2, lr=2e-3),),
                name="prune 70%")
    result = compress(handle, plan, data, tmp_path, latency=False)
    before, after = result.metrics["before"]["accuracy"], result.metrics["after"]["accuracy"]
    assert before > 0.85, f"the unpruned MobileNetV3 reached only {before:.3f}"
    assert result.metrics["batch_norm"] == {"layers": 34, "reestimations": 1}
    assert result.metrics["weights_kept"] < 0.35
    assert after >= before - 0.03, f"pruned 70% + fine-tuned: {after:.3f} on the decoded file vs {before:.3f}"
