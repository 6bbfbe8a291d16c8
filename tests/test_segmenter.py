import torch

from rc2l.config import ModelConfig
from rc2l.losses.functional import mask_average_pool as region_features
from rc2l.models.segmenter import build_model, semantic_masks

from helpers import tiny_model_config

TINY = tiny_model_config("resnet18")


def test_region_features_are_mask_weighted_means():
    F = torch.zeros(1, 2, 2, 2)
    F[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    F[0, 1] = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0, 0] = 1  # one pixel
    masks[0, 1] = 1  # all pixels
    masks[0, 2, 1] = torch.tensor([0.5, 1.0])  # soft mask on the bottom row
    r = region_features(F, masks)
    assert torch.allclose(r[0, 0], torch.tensor([1.0, 10.0]))
    assert torch.allclose(r[0, 1], torch.tensor([2.5, 2.5]))
    assert torch.allclose(r[0, 2], torch.tensor([(0.5 * 3 + 4) / 1.5, 0.0]), atol=1e-5)


def test_semantic_masks_hand_made():
    # query 0: class 0 with prob ~1 over the left column; query 1: "no object" everywhere
    logits = torch.tensor([[[20.0, -20.0, -20.0], [-20.0, -20.0, 20.0]]])
    masks = torch.full((1, 2, 2, 2), -20.0)
    masks[0, 0, :, 0] = 20.0
    masks[0, 1] = 20.0
    S = semantic_masks(logits, masks)
    assert S.shape == (1, 2, 2, 2)
    assert torch.allclose(S[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]), atol=1e-4)
    assert torch.allclose(S[0, 1], torch.zeros(2, 2), atol=1e-4)  # the no-object query adds nothing


def test_segmenter_outputs_and_prediction_at_input_size():
    torch.manual_seed(0)
    model = build_model(5, TINY)
    x = torch.rand(2, 3, 64, 80)
    out = model(x)
    assert out["pred_logits"].shape == (2, 8, 6)
    assert out["pred_masks"].shape == (2, 8, 16, 20)
    assert out["mask_embed"].shape == (2, 8, 32)
    assert out["pixel_feats"].shape == (2, 32, 16, 20)
    assert out["sem_masks"].shape == (2, 5, 16, 20)
    assert len(out["aux_outputs"]) == 1
    # p_i = f_i · F
    ref = torch.einsum("bqc,bchw->bqhw", out["mask_embed"], out["pixel_feats"])
    assert torch.allclose(ref, out["pred_masks"], atol=1e-5)
    assert torch.allclose(semantic_masks(out["pred_logits"], out["pred_masks"]), out["sem_masks"])
    model.eval()
    with torch.no_grad():
        scores = model.semantic_scores(torch.rand(1, 3, 50, 70))
    assert scores.shape == (1, 5, 50, 70)
    assert len(model(x)["aux_outputs"]) == 0  # eval skips intermediate heads


def test_masked_attention_variant_runs_and_backpropagates():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.__dict__, "masked_attention": True, "dec_layers": 3})
    model = build_model(3, cfg)
    out = model(torch.rand(1, 3, 64, 64))
    assert len(out["aux_outputs"]) == 2
    out["sem_masks"].sum().backward()
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_param_groups_split_backbone_and_head():
    model = build_model(3, TINY)
    g = model.param_groups()
    n_all = sum(1 for p in model.parameters())
    assert len(g["backbone"]) + len(g["head"]) == n_all
    assert {id(p) for p in g["backbone"]} == {id(p) for p in model.backbone.parameters()}


def test_no_intermediate_heads_without_deep_supervision():
    model = build_model(3, TINY)
    model.decoder.aux_predictions = False  # what the trainer sets for loss.deep_supervision=false
    out = model(torch.rand(1, 3, 64, 64))
    assert out["aux_outputs"] == [] and out["pred_masks"].shape == (1, 8, 16, 16)


def test_decoder_attention_matches_multihead_attention_and_loads_its_weights():
    """Same parameters, names and seeded initialisation as nn.MultiheadAttention, same output
    (with and without a mask), so checkpoints written before the swap keep loading."""
    from rc2l.models.decoder import Attention

    torch.manual_seed(3)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    torch.manual_seed(3)
    ours = Attention(16, 4)
    assert ref.state_dict().keys() == ours.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k
    torch.nn.init.normal_(ref.in_proj_bias)  # non-zero biases, so a swapped q/k/v bias would show
    torch.nn.init.normal_(ref.out_proj.bias)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g) for n in (5, 7, 7))
    block = torch.rand(2 * 4, 5, 7, generator=g) < 0.4
    block[..., 0] = False  # every query may look somewhere
    for mask in (None, block):
        expected = ref(q, k, v, attn_mask=mask, need_weights=False)[0]
        assert torch.allclose(ours(q, k, v, mask), expected, atol=1e-6)
    assert not torch.allclose(ours(q, k, v, block), ours(q, k, v))  # the mask takes effect
