"""The ATST networks: registry, G1 (tiles224 / native), PathoDuet loading, G2, PatchGAN, FLOPs."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from atst_model.networks import (
    EncoderWeightsWarning,
    checkpoint_filter_fn,
    count_flops,
    count_parameters,
    create_encoder,
    create_network,
    list_networks,
    load_pathoduet,
    network_config,
)
from atst_model.networks.pathoduet import sincos_pos_embed
from atst_model.networks.tiling import blend_tiles, crop_tile_grid, extract_tiles, tile_offsets, tile_weights

FULL = {"g1-vitb", "g1-vitb-native"}  # checked on the meta device: shapes without the compute
IGNORE_RANDOM_INIT = pytest.mark.filterwarnings("ignore::atst_model.networks.pathoduet.EncoderWeightsWarning")


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _expected_shape(name: str, b: int, size: int) -> tuple[int, ...]:
    if name.startswith("d-"):
        n = network_config(name).n_layers
        return (b, 1, size // 2**n - 2, size // 2**n - 2)
    return (b, 3, size, size)


# ----------------------------------------------------------------------------- registry


def test_registry_holds_the_generators_and_discriminators_of_the_method():
    assert {"g1-vitb", "g1-tiny", "g2-resunet", "g2-tiny", "d-patchgan", "d-tiny"} <= set(list_networks())
    full = network_config("g1-vitb")
    assert (full.embed_dim, full.depth, full.num_heads, full.img_size, full.mode) == (768, 12, 12, 224, "tiles224")
    assert full.taps == (2, 5, 8, 11) and full.bottleneck_blocks == 5 and full.pathoduet_shaped
    assert network_config("g1-tiny").taps == (0, 1, 2, 3)
    assert network_config("d-patchgan").receptive_field == 70 == network_config("d-tiny").receptive_field


@IGNORE_RANDOM_INIT
@pytest.mark.parametrize("name", list_networks())
def test_every_registered_network_gives_the_documented_shape_and_dtype(name):
    size = 224 if name.startswith("g1") else 32  # G1's tiles are 224; the others take any multiple of 8
    if name in FULL:
        with torch.device("meta"):
            out = create_network(name)(torch.empty(2, 3, 512, 512))
        assert out.shape == _expected_shape(name, 2, 512) and out.dtype == torch.float32
        return
    torch.manual_seed(0)
    net = create_network(name)
    out = net(_image(2, 3, size, size))
    assert out.shape == _expected_shape(name, 2, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if not name.startswith("d-"):
        assert out.abs().max() <= 1  # tanh images in [-1, 1]


@pytest.mark.parametrize("name", [n for n in list_networks() if n.endswith("tiny")])
def test_tiny_networks_run_under_bf16_autocast_on_cpu(name):
    torch.manual_seed(0)
    net, size = create_network(name), 224 if name.startswith("g1") else 64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_image(1, 3, size, size))
    assert out.shape == _expected_shape(name, 1, size) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_unknown_network_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown network 'g1-vitl'") as info:
        create_network("g1-vitl")
    assert all(name in str(info.value) for name in list_networks())


def test_bad_overrides_name_the_field():
    with pytest.raises(ValueError, match="unknown option.*embed_dims.*valid:.*embed_dim"):
        network_config("g1-tiny", embed_dims=32)
    with pytest.raises(ValueError, match="depth=6"):
        network_config("g1-tiny", depth=6)  # taps need depth / 4
    with pytest.raises(ValueError, match="tile_stride=300"):
        network_config("g1-tiny", tile_stride=300)
    with pytest.raises(ValueError, match="norm='layer'"):
        network_config("g2-tiny", norm="layer")
    with pytest.raises(ValueError, match="n_layers=0"):
        network_config("d-tiny", n_layers=0)
    assert network_config("g1-tiny", decoder_channels=[8, 8, 16, 32]).decoder_channels == (8, 8, 16, 32)  # from JSON


# ----------------------------------------------------------------------------- tiling


def test_tile_offsets_are_the_papers_and_cover_any_crop():
    assert tile_offsets(512, 224, 144) == (0, 144, 288)
    assert tile_offsets(224, 224, 144) == (0,)
    for length in (225, 300, 367, 513, 1024):
        offs = tile_offsets(length, 224, 144)
        assert offs[0] == 0 and offs[-1] == length - 224
        assert max(b - a for a, b in zip(offs, offs[1:])) <= 144
        assert len(offs) == math.ceil((length - 224) / 144) + 1  # the fewest tiles that do it
    with pytest.raises(ValueError, match="smaller than"):
        tile_offsets(200, 224, 144)


@pytest.mark.parametrize("shape", [(512, 512), (300, 517)])
def test_blend_weights_sum_to_one_at_every_pixel(shape):
    grid = crop_tile_grid(*shape, 224, 144)
    weights = tile_weights(grid)
    canvas = torch.zeros(shape)
    k = 0
    for y in grid.offsets_y:  # placed one by one here, independently of blend_tiles' index_add
        for x in grid.offsets_x:
            canvas[y:y + 224, x:x + 224] += weights[k]
            k += 1
    torch.testing.assert_close(canvas, torch.ones(shape), rtol=0, atol=1e-6)
    assert (weights > 0).all()
    centre, edge = weights[0, 100, 100], weights[0, 100, 223]  # tile 0's right edge overlaps tile 1
    assert edge < 0.05 * centre  # falls off where the tile's context is cut


@pytest.mark.parametrize("shape", [(2, 3, 512, 512), (1, 3, 300, 517)])
def test_tiles224_with_an_identity_tile_network_gives_the_input_back_in_one_batch(monkeypatch, shape):
    g1 = create_network("g1-tiny")
    calls = []

    def identity(tiles):
        calls.append(tiles.shape)
        return tiles

    monkeypatch.setattr(g1, "forward_tile", identity)
    x = _image(*shape)
    out = g1(x)
    grid = crop_tile_grid(shape[2], shape[3], 224, 144)
    assert calls == [torch.Size([shape[0] * grid.n_tiles, 3, 224, 224])]  # one forward, all tiles batched
    assert shape[2:] != (512, 512) or grid.n_tiles == 9
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)  # no seam anywhere
    out_cl = g1(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, x, rtol=0, atol=1e-6)


def test_overlapping_tiles_are_averaged_not_overwritten():
    grid = crop_tile_grid(224, 512, 224, 144)  # one row of three tiles
    x = torch.zeros(1, 1, 224, 512)
    tiles = extract_tiles(x, grid) + torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1)
    out = blend_tiles(tiles, grid)[0, 0, 0]
    assert out[:144].eq(0).all() and out[368:].eq(2).all()  # seen by one tile only
    overlap = out[144:224]  # tiles 0 and 1
    assert (overlap > 0).all() and (overlap < 1).all()
    assert (overlap.diff() > 0).all()  # a ramp from one tile to the next, not a step
    assert out.diff().abs().max() < 0.05


# ----------------------------------------------------------------------------- G1


def test_g1_tiles224_runs_the_network_on_nine_tiles_per_512_crop():
    tiles = create_network("g1-tiny")
    assert count_flops(tiles, (1, 3, 512, 512)) == 9 * count_flops(tiles, (1, 3, 224, 224)) > 0
    native = create_network("g1-tiny", mode="native")
    assert 0 < count_flops(native, (1, 3, 512, 512)) < count_flops(tiles, (1, 3, 512, 512))


@pytest.mark.parametrize("size", [512, 256])
def test_g1_native_mode_runs_the_vit_at_the_crops_size(size):
    torch.manual_seed(0)
    g1 = create_network("g1-tiny", mode="native")
    x = _image(1, 3, size, size)
    levels = g1.encode(x)
    assert [z.shape for z in levels] == [torch.Size([1, 64, size // 16, size // 16])] * 4
    out = g1(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.abs().max() <= 1


def test_g1_rejects_inputs_its_mode_cannot_take():
    with pytest.raises(ValueError, match="multiples of 16"):
        create_network("g1-tiny", mode="native")(torch.zeros(1, 3, 200, 256))
    with pytest.raises(ValueError, match=">= its 224 px tile"):
        create_network("g1-tiny")(torch.zeros(1, 3, 192, 512))


@pytest.mark.parametrize("mode", ["tiles224", "native"])
def test_g1_every_trainable_parameter_gets_a_gradient(mode):
    """Nothing unused (DDP would stop on it); the fixed sin-cos position embedding stays fixed."""
    torch.manual_seed(0)
    g1 = create_network("g1-tiny", mode=mode)
    g1(_image(1, 3, 256, 256)).square().mean().backward()
    assert not g1.encoder.pos_embed.requires_grad
    for name, p in g1.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- PathoDuet


def _pathoduet_state_dict(embed_dim: int, depth: int, num_heads: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with PathoDuet's key names and shapes, every tensor distinct random values."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in create_encoder(embed_dim, depth, num_heads).state_dict().items()}
    shapes["pretext_token"] = shapes.pop("reg_token")
    shapes["head.weight"], shapes["head.bias"] = torch.Size([256, embed_dim]), torch.Size([256])
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_pathoduet_checkpoint_fills_every_encoder_tensor(tmp_path):
    """Full ViT-B: every encoder tensor comes from the file, only head.* is dropped."""
    state = _pathoduet_state_dict(768, 12, 12)
    assert state["pos_embed"].shape == (1, 198, 768) and state["cls_token"].shape == (1, 1, 768)
    assert state["pretext_token"].shape == (1, 1, 768) and len([k for k in state if k.startswith("blocks.11.")]) > 0
    path = tmp_path / "checkpoint_HE.pth"
    torch.save(state, path)
    encoder = load_pathoduet(create_encoder(), path)
    model_state = encoder.state_dict()
    taken = set()
    for key, value in model_state.items():
        source = "pretext_token" if key == "reg_token" else key
        expected = state[source]
        if key == "pos_embed":  # PathoDuet's prefix is [pretext, cls], timm's [cls, reg]
            expected = torch.cat([expected[:, 1:2], expected[:, 0:1], expected[:, 2:]], dim=1)
        assert torch.equal(value, expected), key
        taken.add(source)
    assert set(state) - taken == {"head.weight", "head.bias"}
    assert not encoder.pos_embed.requires_grad  # PathoDuet's embedding is fixed


def test_pathoduet_token_order_is_kept_so_outputs_match_pathoduets_forward(tmp_path):
    state = _pathoduet_state_dict(64, 4, 2, seed=1)
    torch.save(state, tmp_path / "w.pth")
    encoder = load_pathoduet(create_encoder(64, 4, 2), tmp_path / "w.pth").eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ours = encoder.forward_features(x)  # [cls, reg, patches]
        # PathoDuet's VisionTransformerMoCo._pos_embed: cat(pretext, cls, patches) + pos_embed
        patches = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
        tokens = torch.cat([state["pretext_token"].expand(2, -1, -1), state["cls_token"].expand(2, -1, -1),
                            patches.flatten(2).transpose(1, 2)], dim=1) + state["pos_embed"]
        for block in encoder.blocks:
            tokens = block(tokens)
        ref = F.layer_norm(tokens, (64,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    torch.testing.assert_close(ours[:, 2:], ref[:, 2:])
    torch.testing.assert_close(ours[:, 0], ref[:, 1])  # cls
    torch.testing.assert_close(ours[:, 1], ref[:, 0])  # pretext


def test_filter_resamples_the_position_embedding_to_another_grid_keeping_both_prefix_rows():
    state = _pathoduet_state_dict(64, 4, 2)
    with torch.device("meta"):
        encoder = create_encoder(64, 4, 2, img_size=512)
    before = {k: v.clone() for k, v in state.items()}
    out = checkpoint_filter_fn(state, encoder)
    assert out["pos_embed"].shape == (1, 2 + 32 * 32, 64)
    assert torch.equal(out["pos_embed"][:, 0], state["pos_embed"][:, 1])
    assert torch.equal(out["pos_embed"][:, 1], state["pos_embed"][:, 0])
    assert all(torch.equal(before[k], state[k]) for k in state)  # pure: the input is untouched
    assert "head.weight" not in out and "reg_token" in out and "pretext_token" not in out


def test_sincos_position_embedding_is_moco_v3s():
    dim, h, w = 32, 3, 5
    grid_w, grid_h = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")  # MoCo v3 code: meshgrid(grid_w, grid_h), rows first
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w, out_h = torch.einsum("m,d->md", grid_w.flatten(), omega), torch.einsum("m,d->md", grid_h.flatten(), omega)
    ref = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    emb = sincos_pos_embed(h, w, dim)
    assert emb.shape == (1, 2 + h * w, dim) and emb[0, :2].eq(0).all()
    torch.testing.assert_close(emb[0, 2:], ref)


def test_g1_loads_encoder_weights_from_its_config(tmp_path):
    state = _pathoduet_state_dict(64, 4, 2)
    torch.save(state, tmp_path / "w.pth")
    g1 = create_network("g1-tiny", encoder_weights=str(tmp_path / "w.pth"))
    assert torch.equal(g1.encoder.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])


def test_missing_encoder_weights_say_where_to_get_them(tmp_path):
    path = tmp_path / "checkpoint_HE.pth"
    with pytest.raises(FileNotFoundError) as info:
        create_network("g1-tiny", encoder_weights=str(path))
    msg = str(info.value)
    assert str(path) in msg and "PathoDuet" in msg and "--encoder-weights" in msg and "CC-BY-NC" in msg


def test_wrong_encoder_weights_give_one_line_value_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 10)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {}}, wrapped)
    deeper = tmp_path / "deeper.pth"
    torch.save(_pathoduet_state_dict(64, 8, 2), deeper)  # 8 blocks into a 4-block encoder
    wider = tmp_path / "wider.pth"
    torch.save(_pathoduet_state_dict(32, 4, 2), wider)
    cases = {junk: "not a readable PyTorch checkpoint", other: "not a timm ViT", wrapped: "not a flat state_dict",
             deeper: "unexpected: blocks.4", wider: "in the file"}
    for path, match in cases.items():
        with pytest.raises(ValueError, match=match) as info:
            load_pathoduet(create_encoder(64, 4, 2), path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_full_g1_without_weights_warns_and_starts_from_random_init():
    with torch.device("meta"), pytest.warns(EncoderWeightsWarning, match="random weights.*PathoDuet"):
        create_network("g1-vitb")


# ----------------------------------------------------------------------------- sizes


def test_parameter_and_flop_counts_of_the_full_networks():
    with torch.device("meta"), pytest.warns(EncoderWeightsWarning):
        g1 = create_network("g1-vitb")
    assert count_parameters(g1.encoder) == 85_798_656 + 2 * 768  # timm ViT-B/16 without head, + reg token + its pos row
    assert count_flops(g1, (1, 3, 512, 512)) > 9 * 2 * 17e9  # nine ViT-B passes at 224 and a decoder
