"""What a classifier returns per image (shared by the PyTorch and the onnxruntime paths; no torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    image: str
    classes: list[str]
    probabilities: list[float]

    def as_json(self) -> dict:
        """``{"image": path, "top": [{"class": name, "probability": p}, ...]}``."""
        return {"image": self.image,
                "top": [{"class": c, "probability": float(p)} for c, p in zip(self.classes, self.probabilities)]}
