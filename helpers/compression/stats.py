"""Calibration statistics gathered from a linear layer's inputs (always accumulated in float32)."""
from __future__ import annotations

import torch


def _flatten(inputs: torch.Tensor) -> torch.Tensor:
    """[..., in_features] -> [tokens, in_features] in float32."""
    return inputs.reshape(-1, inputs.shape[-1]).float()


class HessianCollector:
    """H = (2 / N) * sum_t x_t x_t^T over all N calibration tokens, as SparseGPT and GPTQ use it.

    shareable: a pure function of the inputs, so linears fed the same input tensor (q/k/v, gate/up) may
    share one (the engine does: one accumulation per distinct input)."""
    shareable = True

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.columns = columns
        self.sum = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = _flatten(inputs).to(self.sum.device)
        self.sum.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.tokens == 0:
            raise RuntimeError("HessianCollector saw no calibration tokens; was the layer ever called?")
        return self.sum * (2.0 / self.tokens)


class InputNormCollector:
    """Per input channel j: the mean over tokens of x_j^2 (Wanda's ||X_j||^2 up to a constant); shareable
    as HessianCollector is."""
    shareable = True

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.columns = columns
        self.sum_squares = torch.zeros(columns, dtype=torch.float32, device=device)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = _flatten(inputs).to(self.sum_squares.device)
        self.sum_squares += x.square().sum(dim=0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens, per input channel."""
        if self.tokens == 0:
            raise RuntimeError("InputNormCollector saw no calibration tokens; was the layer ever called?")
        return self.sum_squares.sqrt()
