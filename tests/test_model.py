"""FalipCLIP against a naive attention written here, and load_model against open_clip's own loaders."""
import copy
import pickle
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import load_random

import pointfalip
from pointfalip.errors import InputError
from pointfalip.model import UnsupportedModel


def naive_encode(model, images, bias, layers, heads=None, amplify=0.0, keep=None):
    """ViT forward written out: softmax(QKᵀ/√d + M)V with M non-zero only in the CLS row, per-head amplify."""
    v = model.visual
    n = images.shape[0]
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(n, 1, -1), x], dim=1) + v.positional_embedding
    flat = torch.cat([torch.zeros(n, 1), bias.reshape(n, -1)], dim=1)
    if keep is not None:
        x = torch.cat([x[:, :1], x[:, 1:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))], dim=1)
        flat = torch.cat([flat[:, :1], flat[:, 1:].gather(1, keep)], dim=1)
    x = v.ln_pre(x)
    blocks = v.transformer.resblocks
    chosen = {i % len(blocks) for i in layers}
    for i, blk in enumerate(blocks):
        attn = blk.attn
        h = attn.num_heads
        length, dim = x.shape[1], x.shape[2]
        hd = dim // h
        y = blk.ln_1(x)
        q, k, val = (y @ attn.in_proj_weight.T + attn.in_proj_bias).split(dim, dim=-1)
        q, k, val = (t.reshape(n, length, h, hd).transpose(1, 2) for t in (q, k, val))
        logits = q @ k.transpose(-1, -2) / hd ** 0.5
        mask = torch.zeros(n, h, length, length)
        if i in chosen:
            for head in range(h):
                if heads is None or head in heads:
                    mask[:, head, 0, :] = flat
        o_masked = (logits + mask).softmax(-1) @ val  # (n, h, L, hd)
        o_plain = logits.softmax(-1) @ val
        w_o = attn.out_proj.weight
        per_head = []
        for head in range(h):  # G_h: each head's term of the output projection
            sl = slice(head * hd, (head + 1) * hd)
            g_new = o_masked[:, head] @ w_o[:, sl].T
            g_old = o_plain[:, head] @ w_o[:, sl].T
            g = g_new.clone()
            if i in chosen:
                g[:, 0] = g_new[:, 0] + amplify * (g_new[:, 0] - g_old[:, 0])
            per_head.append(g)
        out = sum(per_head) + attn.out_proj.bias
        x = x + out
        x = x + blk.mlp(blk.ln_2(x))
    return v.ln_post(x[:, 0]) @ v.proj


@pytest.fixture(scope="module")
def tiny():
    return load_random("pf-tiny-16")


@pytest.mark.parametrize("layers,heads", [((-1,), None), ((0, 2), None), ((-3, -2, -1), (1,)), ((1,), (0, 1))])
def test_foveal_encoder_equals_naive_attention(tiny, layers, heads):
    images = torch.rand(3, 3, 64, 64)
    bias = torch.rand(3, 4, 4) * 2  # a different mask per image
    ours = tiny.encode_image(images, cls_bias=bias, layers=layers, heads=heads)
    with torch.no_grad():
        ref = naive_encode(tiny.clip, images, bias, layers, heads)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name,size,grid", [("pf-tiny-14", (56, 56), (4, 4)), ("pf-tiny-32", (96, 96), (3, 3)),
                                            ("pf-tiny-16-rect", (48, 80), (3, 5))])
def test_patch_sizes_and_shapes(name, size, grid):
    model = load_random(name)
    assert model.grid_size == grid
    images = torch.rand(2, 3, *size)
    bias = torch.rand(2, *grid)
    with torch.no_grad():
        ref = naive_encode(model.clip, images, bias, (-4, -3, -2, -1))
    torch.testing.assert_close(model.encode_image(images, bias), ref, atol=2e-5, rtol=1e-4)
    flat = model.encode_image(images, bias.reshape(2, -1))
    torch.testing.assert_close(flat, ref, atol=2e-5, rtol=1e-4)


def test_amplify_is_per_head_rule(tiny):
    images = torch.rand(2, 3, 64, 64)
    bias = torch.rand(2, 4, 4)
    ours = tiny.encode_image(images, bias, layers=(-2, -1), amplify=1.5)
    with torch.no_grad():
        ref = naive_encode(tiny.clip, images, bias, (-2, -1), amplify=1.5)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    plain = tiny.encode_image(images, bias, layers=(-2, -1))
    assert torch.equal(tiny.encode_image(images, bias, layers=(-2, -1), amplify=0.0), plain)
    assert not torch.allclose(ours, plain)


def test_no_bias_is_open_clip_and_zero_bias_changes_nothing(tiny):
    """Only the CLS token goes through the last block (attention.cls_block): open_clip's numbers, up to rounding."""
    images = torch.rand(4, 3, 64, 64)
    ref = tiny.clip.encode_image(images)
    torch.testing.assert_close(tiny.encode_image(images), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tiny.encode_image(images, torch.zeros(4, 4, 4)), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tiny.encode_image(images, normalize=True), F.normalize(ref, dim=-1))


def test_batch_of_masks_equals_one_by_one(tiny):
    images = torch.rand(3, 3, 64, 64)
    bias = torch.rand(3, 4, 4)
    batch = tiny.encode_image(images, bias)
    single = torch.cat([tiny.encode_image(images[i:i + 1], bias[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_paper_mask_matches_authors_formulation(tiny):
    """The released code adds an (L, L) mask, non-zero only in the CLS row, to the last blocks' logits."""
    images = torch.rand(2, 3, 64, 64)
    bias = torch.rand(2, 4, 4) * 0.2
    layers = (0, 1, 2, 3)
    full_mask = torch.zeros(2 * tiny.num_heads, 17, 17)
    full_mask[:, 0, 1:] = bias.reshape(2, -1).repeat_interleave(tiny.num_heads, 0)
    v = tiny.visual
    with torch.no_grad():
        x = v._embeds(images)
        for blk in v.transformer.resblocks:
            x = blk(x, attn_mask=full_mask)
        ref = v.ln_post(x[:, 0]) @ v.proj
    torch.testing.assert_close(tiny.encode_image(images, bias, layers=layers), ref, atol=2e-5, rtol=1e-4)


def test_patch_dropout_in_training_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = open_clip.create_model("pf-tiny-16", force_patch_dropout=0.5)
    model = pointfalip.FalipCLIP(clip, open_clip.get_tokenizer("pf-tiny-16"), name="pf-tiny-16")
    model.train()
    images = torch.rand(2, 3, 64, 64)
    bias = torch.rand(2, 4, 4)
    torch.manual_seed(7)
    ours = model.encode_image(images, bias)
    torch.manual_seed(7)
    keep = torch.randn(2, 16).topk(8, dim=-1).indices
    with torch.no_grad():
        ref = naive_encode(clip, images, bias, (-4, -3, -2, -1), keep=keep)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    torch.manual_seed(3)
    zero = model.encode_image(images, torch.zeros(2, 16))
    torch.manual_seed(3)
    torch.testing.assert_close(zero, clip.encode_image(images), atol=1e-6, rtol=1e-5)


def test_resnet_tower_is_a_clear_error():
    model = load_random("RN50")
    with pytest.raises(UnsupportedModel, match="ViT"):
        model.encode_image(torch.rand(1, 3, 224, 224), cls_bias=torch.zeros(1, 49))
    assert model.encode_image(torch.rand(1, 3, 224, 224)).shape == (1, 1024)


def test_bad_bias_and_layers(tiny):
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="patch"):
        tiny.encode_image(images, torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="layer"):
        tiny.encode_image(images, torch.zeros(1, 4, 4), layers=[7])
    with pytest.raises(ValueError, match="head"):
        tiny.encode_image(images, torch.zeros(1, 4, 4), heads=[5])


def test_encode_text_uses_model_tokenizer(tiny):
    texts = ["a chair", "a depth map of a bathtub"]
    ref = tiny.clip.encode_text(open_clip.get_tokenizer("pf-tiny-16")(texts))
    torch.testing.assert_close(tiny.encode_text(texts), ref)


def test_bf16_accepts_fp32_images():
    fp32 = load_random("pf-tiny-16")
    bf16 = pointfalip.FalipCLIP(copy.deepcopy(fp32.clip), fp32.tokenizer, name="pf-tiny-16", precision="bf16")
    assert fp32.visual.conv1.weight.dtype == torch.float32 and bf16.visual.conv1.weight.dtype == torch.bfloat16
    images = torch.rand(2, 3, 64, 64)
    bias = torch.rand(2, 4, 4)
    a, b = fp32.encode_image(images, bias), bf16.encode_image(images, bias)
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a, b).min() > 0.99


# ---- loading --------------------------------------------------------------------------------------------
def _features(model, images):
    with torch.no_grad():
        return model.encode_image(images)


def test_openai_state_dict_checkpoint(tmp_path):
    ref_model = open_clip.create_model("pf-tiny-16", force_quick_gelu=True)
    # OpenAI releases fp16 weights (open_clip's OpenAI loader rounds through fp16 too)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ref_model.state_dict().items()}
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai.pt"
    torch.save(state, path)
    ours = pointfalip.load_model("pf-tiny-16", pretrained=str(path))
    # the config name has no QuickGELU; OpenAI weights imply it
    assert isinstance(ours.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    reference = open_clip.load_openai_model(str(path), device="cpu")
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_features(ours, images), _features(reference, images), atol=1e-5, rtol=1e-5)


def test_openai_torchscript_checkpoint(tmp_path):
    ref_model = open_clip.create_model("pf-tiny-16", force_quick_gelu=True).eval()
    path = tmp_path / "openai_jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ref_model), str(path))
    ours = pointfalip.load_model("pf-tiny-16", pretrained=str(path))
    assert isinstance(ours.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_features(ours, images), _features(ref_model, images), atol=1e-5, rtol=1e-5)


def test_open_clip_checkpoint(tmp_path):
    ref_model = open_clip.create_model("pf-tiny-16").eval()
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in ref_model.state_dict().items()}}, path)
    ours = pointfalip.load_model("pf-tiny-16", pretrained=str(path))
    theirs = open_clip.create_model("pf-tiny-16", pretrained=str(path)).eval()
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_features(ours, images), _features(theirs, images))
    assert not isinstance(ours.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def test_checkpoint_errors(tmp_path):
    other = open_clip.create_model("pf-tiny-32")
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(InputError, match="does not fit"):
        pointfalip.load_model("pf-tiny-16", pretrained=str(path))
    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as f:
        pickle.dump({"x": pytest.approx}, f)  # a function: refused by weights_only loading
    with pytest.raises(InputError, match="cannot read checkpoint"):
        pointfalip.load_model("pf-tiny-16", pretrained=str(unsafe))


def test_names_tags_and_random_weights():
    with pytest.raises(InputError, match="unknown model"):
        pointfalip.load_model("ViT-Q-99", pretrained="none")
    with pytest.raises(InputError, match="neither a file nor a pretrained tag"):
        pointfalip.load_model("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(InputError, match="precision"):
        pointfalip.load_model("pf-tiny-16", pretrained="none", precision="int3")
    with pytest.warns(UserWarning, match="random weights"):
        pointfalip.load_model("pf-tiny-16", pretrained="none")


@pytest.mark.parametrize("amplify", [0.0, 1.5])
def test_encode_image_pair_shares_the_trunk(tiny, amplify):
    images = torch.rand(3, 3, 64, 64)
    bias = torch.rand(3, 4, 4)
    foveal_feats, plain = tiny.encode_image_pair(images, bias, layers=(-2, -1), amplify=amplify, normalize=True)
    torch.testing.assert_close(foveal_feats, tiny.encode_image(images, bias, layers=(-2, -1), amplify=amplify,
                                                               normalize=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, tiny.encode_image(images, normalize=True), atol=1e-5, rtol=1e-5)


def test_random_weights_are_repeatable_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = load_random("pf-tiny-16"), load_random("pf-tiny-16")
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.clip.state_dict().items(), b.clip.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_return_tokens_are_open_clips_patch_tokens(tiny):
    images = torch.rand(2, 3, 64, 64)
    feats, tokens = tiny.encode_image(images, return_tokens=True)
    v = tiny.visual
    v.output_tokens = True
    try:
        pooled, raw_tokens = v(images)
    finally:
        v.output_tokens = False
    torch.testing.assert_close(feats, pooled)
    torch.testing.assert_close(tokens, raw_tokens @ v.proj)
    assert tokens.shape == (2, 16, 32)
    bias = torch.rand(2, 4, 4)
    f_bias, t_bias = tiny.encode_image(images, bias, return_tokens=True, normalize=True)
    torch.testing.assert_close(f_bias, tiny.encode_image(images, bias, normalize=True))
    torch.testing.assert_close(t_bias.norm(dim=-1), torch.ones(2, 16))
    with pytest.raises(InputError, match="dense mode"):
        tiny.encode_image(images, return_tokens=True, dense="sharp")


def test_preset_layers_beyond_a_shallow_model_are_one_line(tmp_path):
    import json

    from conftest import TINY, raises_one_line

    cfg = json.loads(json.dumps(TINY["pf-tiny-16"]))
    cfg["vision_cfg"]["layers"] = 3
    path = tmp_path / "pf-three-blocks.json"
    path.write_text(json.dumps(cfg))
    model = load_random(str(path))
    msg = raises_one_line(pointfalip.Recognizer, model, labels=["a", "b"], preset="pointclip_v2")
    assert "[-4, -3, -2, -1]" in msg and "3 blocks" in msg
    pointfalip.Recognizer(model, labels=["a", "b"], falip=False)  # the baseline needs no foveal layer
