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


def test_bce_cost_soft_targets_and_large_logits():
    """softplus(x) − x·t summed over many pixels must not lose the small BCE of confident, right
    predictions to cancellation (logits ±30, 16k pixels), and must hold for soft targets."""
    g = torch.Generator().manual_seed(2)
    tgt = torch.rand(3, 16384, generator=g)
    tgt[0] = (tgt[0] > 0.5).float()
    logits = torch.cat([30 * (2 * tgt[:1] - 1), torch.randn(2, 16384, generator=g) * 5])
    bce = batch_bce_cost(logits, tgt)
    for i in range(3):
        for j in range(3):
            ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[i].double(), tgt[j].double())
            assert abs(bce[i, j].item() - ref.item()) < 1e-4 * max(1.0, ref.item()), (i, j)


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


def random_targets(counts, K=5, P=(6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"labels": torch.randint(0, K, (m,), generator=g), "masks": (torch.rand(m, *P, generator=g) > 0.5).float()}
        for m in counts
    ]


def test_batched_match_equals_one_image_at_a_time():
    """The padded whole-batch cost gives the per-image cost and assignment, with images of
    different target counts, one without targets, and more targets than queries."""
    from rc2l.losses.matcher import match

    g = torch.Generator().manual_seed(3)
    B, N, K = 4, 5, 5
    logits, masks = torch.randn(B, N, K + 1, generator=g), torch.randn(B, N, 6, 7, generator=g)
    targets = random_targets([3, 0, 7, 1])
    batch = match(logits, masks, targets)
    assert [len(p) for p, _ in batch] == [3, 0, 5, 1]
    for b, t in enumerate(targets):
        cost = match_cost(logits[b], masks[b].flatten(1), t["labels"], t["masks"].flatten(1))
        pi, ti = hungarian(cost)
        assert torch.equal(batch[b][0], pi) and torch.equal(batch[b][1], ti)
    assert [len(p) for p, _ in match(logits[:2], masks[:2], random_targets([0, 0]))] == [0, 0]


def test_weighted_cost_equals_cost_on_the_selected_pixels():
    """``weight`` (the supervised matcher's non-ignored pixels) is the cost on those pixels only."""
    g = torch.Generator().manual_seed(4)
    logits, masks = torch.randn(4, 6, generator=g), torch.randn(4, 40, generator=g)
    t = random_targets([3], P=(40,))[0]
    keep = torch.rand(40, generator=g) > 0.3
    ref = match_cost(logits, masks[:, keep], t["labels"], t["masks"][:, keep])
    got = match_cost(logits, masks, t["labels"], t["masks"], weight=keep.float())
    assert torch.allclose(got, ref, atol=1e-5)


def test_pack_matches_indexes_the_concatenated_targets():
    from rc2l.losses.matcher import pack_matches, pad_targets

    targets = random_targets([2, 0, 3])
    idx = [
        (torch.tensor([4, 1]), torch.tensor([0, 1])),
        (torch.zeros(0, dtype=torch.int64),) * 2,
        (torch.tensor([0, 2]), torch.tensor([1, 2])),
    ]
    m = pack_matches(idx, [2, 0, 3], "cpu")
    assert len(m) == 4 and m.img.tolist() == [0, 0, 2, 2] and m.pred.tolist() == [4, 1, 0, 2]
    assert m.tgt.tolist() == [0, 1, 3, 4] and m.local.tolist() == [0, 1, 1, 2]
    flat = torch.cat([t["masks"] for t in targets])
    padded, counts = pad_targets(targets, "masks")
    assert counts == [2, 0, 3] and padded.shape == (3, 3, 6, 7)
    assert torch.equal(padded[m.img, m.local], flat[m.tgt]) and padded[0, 2].abs().sum() == 0
