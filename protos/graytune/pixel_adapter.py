"""The pixel adapter as the wire declares it (InputHeader.pixel_adapter), shared by both sides.

    pixels uint8 (B, 3, H, W) -> normalise -> conv k×k, 3 -> C -> ... -> C -> 3, no activation

The client's PixelAdapter module is this stack; the server's frugal image call runs `apply` on
the parameters a caller sends with its pixels. `normalise` is the one normalisation both the
client's preprocessing and the server use, so pixels sent as uint8 reach the adapter with the
bits the client would have sent as floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

PREFIX = "pixel_adapter."  # the parameters' tensor names: "pixel_adapter.<i>.weight", "….bias"


@dataclass(frozen=True)
class PixelAdapterSpec:
    layers: int
    channels: int
    kernel_size: int

    def widths(self) -> list[int]:
        """Channels between the layers: [3, C, ..., C, 3]."""
        return [3] + [self.channels] * (self.layers - 1) + [3]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each parameter's tensor name and shape, in the order `apply` uses them."""
        k, widths = self.kernel_size, self.widths()
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            shapes[f"{PREFIX}{i}.weight"] = (c_out, c_in, k, k)
            shapes[f"{PREFIX}{i}.bias"] = (c_out,)
        return shapes

    def multiply_adds_per_pixel(self) -> int:
        """The adapter's work for one pixel: what bounds it on the server."""
        widths = self.widths()
        return sum(c_in * c_out for c_in, c_out in zip(widths[:-1], widths[1:])) * self.kernel_size**2


@runtime_checkable
class DeclaredAdapter(Protocol):
    """A module the server can run for a caller: its architecture and its parameters by their
    wire names (the client's PixelAdapter)."""

    spec: PixelAdapterSpec

    def wire_parameters(self) -> dict[str, torch.Tensor]: ...

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


def apply(spec: PixelAdapterSpec, parameters: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, 3, H, W), through the declared stack."""
    x = pixels
    for i in range(spec.layers):
        x = F.conv2d(
            x, parameters[f"{PREFIX}{i}.weight"], parameters[f"{PREFIX}{i}.bias"], padding=spec.kernel_size // 2
        )
    return x


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> float32 (x / 255 - mean) / std, per channel."""
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).reshape(shape)
    return (pixels.to(torch.float32) / 255 - m) / s


def quantised(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor | None:
    """The uint8 pixels that `normalise` turns into exactly `pixels` (float (..., 3, H, W)), or
    None when there are none (pixels not made from 8-bit images, or changed since)."""
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32).reshape(shape)
    guess = ((pixels.detach().float() * s + m) * 255).round()
    if not bool(((guess >= 0) & (guess <= 255)).all()):
        return None
    eight_bit = guess.to(torch.uint8)
    return eight_bit if torch.equal(normalise(eight_bit, mean, std), pixels.detach().float()) else None
