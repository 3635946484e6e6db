"""Channel pruning with a genetic algorithm (Hu et al. 2018, arXiv 1805.11394), L1 and random baselines.

Removed channels are removed for real: Torch-Pruning's dependency graph finds every layer a channel
touches (the next convolution's input, BatchNorm, the residual adds that couple ResNet blocks) and
shrinks them all, so parameters, FLOPs, file bytes and CPU latency drop on any device. No code here
knows an architecture: a "channel group" is Torch-Pruning's group rooted at a convolution's output
channels, and coupled convolutions (outputs added by skip connections) share one keep mask.

The method, per the paper:
- groups are pruned one at a time, least sensitive first (accuracy drop with half the channels
  masked by L1 norm, measured here on a validation subset);
- per group a population of 0/1 keep masks with exactly round(keep_ratio * n) ones (seeded with the
  L1 choice plus Bernoulli samples), uniform crossover, swap mutation, tournament selection, elitism;
- two-step approximate fitness: a cheap screen of every candidate (the relative reconstruction error
  of the consumer layers' outputs on `screen_size` images, as the paper's first step), then the
  task score (top-1, a detector's mAP50) on `fitness_size` validation images for the best `survivors` only;
- after each group, BatchNorm statistics are re-estimated on `recalibrate_size` training images (no
  training: the search then scores the next group on a model that is not already broken), then
  fine-tuning (with the KD loss when the plan has a distill step), after which ctx.finetune
  re-estimates them again (methods/bn_stats.py).
During the search a candidate is applied by zeroing the masked channels at the inputs of the consumer
layers (forward pre-hooks), which gives exactly the outputs the physically pruned model gives.

YOLO detectors: Ultralytics' C2f is first replaced by the split-free, output-identical C2fV2
(models/yolo_prunable.py, recorded in the file so the decoder repeats it), and the Detect head's prediction
outputs and DFL are never pruned (detector.py). The search's cheap screen reads letterboxed validation images
(StepContext.screen_images) and its accurate step is mAP50 on `fitness_size` validation images
(StepContext.make_scorer(..., "fitness")); fine-tuning uses the detection loss, distilled when the plan has a
distill step (methods/detect_train.py).

Files, one job each: graph.py (channel groups from the dependency graph, masking hooks, the L1 criterion,
physical removal), ga.py (the genetic search and its two-step fitness), step.py (the plan step's handler),
detector.py (a detector pruned to one keep ratio in one call, and the head layers that must stay whole).
The compact file records Torch-Pruning's `pruning_history()` (plain JSON: module name, direction,
channel indices); `models.channel_replay.replay` re-applies it to a freshly built architecture before the
weights load.
"""

from complab.methods.channels.graph import keep_count  # the plan page's "channels kept" rule
from complab.methods.channels.step import run  # importing step registers the handler (registry.py)

__all__ = ["keep_count", "run"]
