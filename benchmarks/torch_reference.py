"""A plain PyTorch implementation of model slicing, the yardstick of train_step.py.

Written from the paper's description (Cai et al., arXiv 1904.01831), not from
keras-slicing: the channels of every convolution are split into
`slice_groups` contiguous groups, rate r keeps the first ceil(r * G) groups,
and a sliced convolution convolves with the leading block
`weight[:c_out, :c_in]` of its full kernel. Group normalization uses one
group per slice group, so a narrow width normalizes its active groups alone.

The network is the sliced pre-activation ResNet of
`examples/cifar10_resnet.py` (depth 6n+2, widths 16-32-64, group norm with 8
groups aligned with the 8 slice groups, epsilon 1e-3, 1x1 projection
shortcuts, a dense classifier whose input is sliced), written the PyTorch
way: channels first, as the paper's code does. One `random_min_max` step
runs the widest rate, the narrowest and one random rate in between, sums the
three cross-entropy losses and makes one SGD update (Nesterov momentum 0.9,
weight decay 1e-4).

    from benchmarks import torch_reference
    model = torch_reference.PreActResNet(depth=20)
    step = torch_reference.RandomMinMaxStep(model)
    loss = step(x, y)  # x: (N, 3, 32, 32) float32, y: (N,) int64
"""

import math
import random

import torch
from torch import nn
from torch.nn import functional as F

RATES = (1.0, 0.75, 0.5, 0.25)
SLICE_GROUPS = 8


def active(width, rate, groups=SLICE_GROUPS):
    """Channels kept at `rate`: the first ceil(rate * groups) groups."""
    return max(1, math.ceil(round(rate * groups, 6))) * (width // groups)


class SlicedConv(nn.Module):
    """A bias-free convolution over the leading block of its kernel."""

    def __init__(self, c_in, c_out, size, stride=1, slice_input=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, size, size))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.stride, self.padding = stride, size // 2
        self.slice_input = slice_input

    def forward(self, x, rate):
        c_out = active(self.weight.shape[0], rate)
        c_in = x.shape[1] if self.slice_input else self.weight.shape[1]
        weight = self.weight[:c_out, :c_in]
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)


class SlicedGroupNorm(nn.Module):
    """Group norm over the active channels: one group per slice group."""

    def __init__(self, channels, eps=1e-3):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.per_group = channels // SLICE_GROUPS
        self.eps = eps

    def forward(self, x):
        n = x.shape[1]
        return F.group_norm(
            x, n // self.per_group, self.weight[:n], self.bias[:n], self.eps
        )


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.norm1 = SlicedGroupNorm(c_in)
        self.conv1 = SlicedConv(c_in, c_out, 3, stride)
        self.norm2 = SlicedGroupNorm(c_out)
        self.conv2 = SlicedConv(c_out, c_out, 3)
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = SlicedConv(c_in, c_out, 1, stride)

    def forward(self, x, rate):
        pre = F.relu(self.norm1(x))
        shortcut = x if self.project is None else self.project(pre, rate)
        h = self.conv1(pre, rate)
        h = self.conv2(F.relu(self.norm2(h)), rate)
        return h + shortcut


class PreActResNet(nn.Module):
    """The sliced pre-activation ResNet for 32x32 images; `forward(x, rate)`."""

    def __init__(self, depth=20, base_width=16, classes=10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2. Received: depth={depth}")
        blocks = (depth - 2) // 6
        self.stem = SlicedConv(3, base_width, 3, slice_input=False)
        stages, width = [], base_width
        for stage in range(3):
            filters = base_width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(PreActBlock(width, filters, stride))
                width = filters
        self.blocks = nn.ModuleList(stages)
        self.norm = SlicedGroupNorm(width)
        self.logits = nn.Linear(width, classes)

    def forward(self, x, rate=1.0):
        h = self.stem(x, rate)
        for block in self.blocks:
            h = block(h, rate)
        h = F.relu(self.norm(h)).mean(dim=(2, 3))
        n = h.shape[1]
        return F.linear(h, self.logits.weight[:, :n], self.logits.bias)


class RandomMinMaxStep:
    """One training step: widest + narrowest + one random rate, losses summed."""

    def __init__(self, model, rates=RATES, learning_rate=0.1, seed=0):
        self.model = model
        self.rates = sorted(rates, reverse=True)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=learning_rate, momentum=0.9, nesterov=True,
            weight_decay=1e-4,
        )
        self.random = random.Random(seed)

    def sample(self):
        middle = self.rates[1:-1]
        return [self.rates[0], self.rates[-1], self.random.choice(middle)]

    def __call__(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for rate in self.sample():
            total = total + F.cross_entropy(self.model(x, rate), y)
        total.backward()
        self.optimizer.step()
        return total.detach()
