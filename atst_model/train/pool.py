"""The image pool of CycleGAN (Shrivastava et al. 2017): discriminators see a history of fakes."""

from __future__ import annotations

import torch


class ImagePool:
    """Keep up to ``size`` past fake images; return a mix of new and old ones.

    Uses its own ``torch.Generator`` so its choices are part of the resumable
    state (:meth:`state_dict`), independent of everything else's randomness.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.cpu().clone())
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() > 0.5:
                i = int(torch.randint(0, self.size, (1,), generator=self.generator))
                old = self.images[i].to(image.device, image.dtype)
                self.images[i] = image.cpu().clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [i.clone() for i in self.images],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        self.images = [i.clone() for i in state["images"]]
        self.generator.set_state(state["generator"])
