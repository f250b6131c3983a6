"""Two tiny networks with batch norm for the meta-step and API tests (seconds on a CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCls(nn.Module):
    def __init__(self, c=3, k=4):
        super().__init__()
        self.conv = nn.Conv2d(c, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, k)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


class TinySeg(nn.Module):
    def __init__(self, c=1, k=2):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, k, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.tanh(self.bn(self.conv1(x))))
