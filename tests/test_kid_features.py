"""KID and FID on the published networks' architectures, from weight files (random-weight stand-ins here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import inception_v3

from atst_model.eval import features as feat
from atst_prep.images import InputError


@pytest.fixture(scope="module")
def images(real_ihc):
    return [real_ihc[:128, :160], real_ihc[200:328, 100:228], real_ihc[::-1][:96, :96].copy()]


def _save(model, path):
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("kind", ["kid", "fid"])
def test_features_equal_pytorch_fids_wrapper_with_the_same_weights(tmp_path, images, kind, monkeypatch):
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    if kind == "kid":
        reference = inception_v3(weights=None, aux_logits=True, init_weights=True).eval()
        monkeypatch.setattr(pf, "_inception_v3", lambda *a, **k: reference)
    else:
        reference = feat.load_torch_inception(_save(_fid_stand_in(), tmp_path / "ref.pth"), "fid")
        monkeypatch.setattr(pf, "fid_inception_v3", lambda: reference)
    path = _save(reference, tmp_path / "w.pth")
    wrapper = pf.InceptionV3([3], use_fid_inception=kind == "fid").eval()  # pytorch-fid's own input path
    ours = feat.torch_inception_features(images, feat.load_torch_inception(path, kind), batch=2)
    with torch.no_grad():
        want = np.concatenate([wrapper(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0].flatten(1)
                               .double().numpy() for img in images])
    assert ours.shape == (3, 2048)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)


def _fid_stand_in():
    return feat.build_inception("fid", init_weights=True)


def test_weights_of_the_wrong_network_are_one_clear_error(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="not a torchvision Inception-v3 state dict"):
        feat.load_torch_inception(bad, "kid")
    with pytest.raises(InputError, match="--kid-weights"):
        feat.find_hub_weights(tmp_path / "missing.pth", feat.TORCHVISION_INCEPTION, "torchvision Inception-v3",
                              "--kid-weights")


def test_hub_cache_lookup_finds_the_published_file_names(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert feat.find_hub_weights(None, feat.TORCHVISION_INCEPTION, "x", "--kid-weights") is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"")
    (tmp_path / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    assert feat.find_hub_weights(None, feat.TORCHVISION_INCEPTION, "x", "-").name.startswith("inception_v3_google")
    assert feat.find_hub_weights(None, feat.PYTORCH_FID_INCEPTION, "x", "-").name.startswith("pt_inception")


def test_evaluate_labels_kid_by_the_network_it_used(tmp_path, real_ihc, monkeypatch):
    import cv2

    from atst_model.eval.run import evaluate

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    for d in ("fake", "real"):
        (tmp_path / d).mkdir()
    for i in range(3):
        crop = real_ihc[i * 100:i * 100 + 96, :96]
        cv2.imwrite(str(tmp_path / "real" / f"p{i}.png"), crop)
        cv2.imwrite(str(tmp_path / "fake" / f"p{i}.png"), crop[::-1])
    torch.manual_seed(0)
    kid = _save(inception_v3(weights=None, aux_logits=True, init_weights=True), tmp_path / "kid.pth")
    default = evaluate(tmp_path / "fake", tmp_path / "real", out_dir=tmp_path / "a").summary
    published = evaluate(tmp_path / "fake", tmp_path / "real", out_dir=tmp_path / "b", kid_weights=kid).summary
    assert "NOT the published KID network" in default["conventions"]["kid_features"]
    assert published["conventions"]["kid_features"].startswith("torchvision ImageNet Inception-v3")
    assert published["fid"] == pytest.approx(default["fid"])  # FID still on the bundled network
    assert published["kid_x1000_mean"] != pytest.approx(default["kid_x1000_mean"])
