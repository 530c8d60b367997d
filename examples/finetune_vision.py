"""Fine-tune EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST, offline, with one optimizer.

    python examples/finetune_vision.py --method slsam:0.2 --seed 0 --out run.json
    python examples/finetune_vision.py --method sam --quick

Methods: adamw, sam, slsam:S, uniform:S, slsam1p:S, rst:P, looksam:K (examples/finetune/methods.py).
BatchNorm: the second (perturbed) forward runs under slsam.running_stats_frozen, so the
running statistics see every batch once. Needs the Debian package dataset-fashion-mnist.
"""

from finetune.cli import VISION, main

if __name__ == "__main__":
    main("vision", VISION, __doc__)
