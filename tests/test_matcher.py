import itertools

import torch

from rc2l.losses.matcher import batch_bce_cost, batch_dice_cost, hungarian, match_cost


def brute_force(cost: torch.Tensor) -> float:
    n, m = cost.shape
    best = float("inf")
    if n >= m:
        for perm in itertools.permutations(range(n), m):
            best = min(best, sum(cost[perm[j], j].item() for j in range(m)))
    else:
        for perm in itertools.permutations(range(m), n):
            best = min(best, sum(cost[i, perm[i]].item() for i in range(n)))
    return best


def test_hungarian_matches_brute_force_on_random_small_cases():
    g = torch.Generator().manual_seed(0)
    for n, m in [(3, 3), (5, 2), (2, 4), (6, 4), (1, 1)]:
        for _ in range(5):
            cost = torch.rand(n, m, generator=g)
            pi, ti = hungarian(cost)
            assert len(pi) == min(n, m)
            assert len(set(pi.tolist())) == len(pi) and len(set(ti.tolist())) == len(ti)
            assert torch.isclose(cost[pi, ti].sum(), torch.tensor(brute_force(cost)), atol=1e-6)
            assert torch.equal(ti, torch.sort(ti).values)


def test_hungarian_handles_empty_and_nan():
    pi, ti = hungarian(torch.zeros(4, 0))
    assert pi.numel() == 0 and ti.numel() == 0
    cost = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    pi, ti = hungarian(cost)
    assert pi.tolist() == [1, 0]


def test_cost_terms_equal_their_pixelwise_definitions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, generator=g)
    tgt = (torch.rand(3, 30, generator=g) > 0.5).float()
    bce = batch_bce_cost(logits, tgt)
    for i in range(4):
        for j in range(3):
            ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], tgt[j])
            assert torch.isclose(bce[i, j], ref, atol=1e-5)
    prob = logits.sigmoid()
    dice = batch_dice_cost(prob, tgt)
    ref = 1 - (2 * (prob[1] * tgt[2]).sum() + 1) / (prob[1].sum() + tgt[2].sum() + 1)
    assert torch.isclose(dice[1, 2], ref, atol=1e-6)


def test_matching_recovers_a_permutation():
    """Predictions that are a permutation of the targets are matched back to it."""
    masks = torch.zeros(3, 8, 8)
    masks[0, :4], masks[1, 4:, :4], masks[2, 4:, 4:] = 1, 1, 1
    labels = torch.tensor([0, 1, 2])
    perm = torch.tensor([2, 0, 1, 3])  # query q predicts target perm[q]; query 3 = background-ish
    pred_masks = torch.full((4, 8, 8), -10.0)
    pred_logits = torch.full((4, 4), -5.0)
    for q in range(3):
        pred_masks[q][masks[perm[q]] > 0] = 10.0
        pred_logits[q, labels[perm[q]]] = 5.0
    cost = match_cost(pred_logits, pred_masks.flatten(1), labels, masks.flatten(1))
    pi, ti = hungarian(cost)
    assert ti.tolist() == [0, 1, 2]
    assert [perm[p].item() for p in pi] == [0, 1, 2]


def test_hungarian_batch_equals_one_call_per_image():
    """One host copy for the batch gives the same assignment as one call per image, with images
    of different target counts, an image without targets and a NaN cost."""
    from rc2l.losses.matcher import hungarian_batch

    g = torch.Generator().manual_seed(0)
    costs = [torch.rand(6, m, generator=g) for m in (3, 1, 6)]
    costs[1][0, 0] = float("nan")
    batch = hungarian_batch([costs[0], None, costs[1], costs[2]])
    single = [hungarian(costs[0]), hungarian(torch.zeros(6, 0)), hungarian(costs[1]), hungarian(costs[2])]
    assert len(batch) == 4
    for (bp, bt), (sp, st) in zip(batch, single):
        assert torch.equal(bp, sp) and torch.equal(bt, st)
    assert batch[1][0].numel() == 0 and batch[0][0].numel() == 3
    assert [len(p) for p, _ in hungarian_batch([None, None])] == [0, 0]
