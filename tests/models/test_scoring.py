import pytest
import torch

from deploybench.errors import UserError
from deploybench.models.scoring import Scorer, eval_result
from deploybench.profile.accuracy import scores


def _batch(n=50, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_scoring_in_batches_gives_what_scoring_all_at_once_gives():
    logits, labels = _batch()
    whole = eval_result(logits, labels, 7)
    scorer = Scorer(7)
    for i in range(0, 50, 16):
        scorer.add(logits[i : i + 16], labels[i : i + 16])
    parts = scorer.result()
    assert (parts.top1, parts.top5, parts.images) == (whole.top1, whole.top5, 50)
    assert torch.equal(parts.confusion, whole.confusion)
    assert abs(parts.loss - whole.loss) < 1e-5


def test_the_scores_match_a_direct_count():
    logits, labels = _batch(seed=1)
    result = eval_result(logits, labels, 7)
    assert result.top1 == int((logits.argmax(1) == labels).sum()) / 50
    top5 = int((logits.topk(5, 1).indices == labels[:, None]).any(1).sum()) / 50
    assert result.top5 == top5
    assert abs(result.loss - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-5


def test_a_profile_row_holds_the_scores_a_stage_records():
    logits, labels = _batch(seed=2)
    result = eval_result(logits, labels, 7)
    assert scores(logits, labels) == dict(accuracy_top1=result.top1, accuracy_top5=result.top5, test_images=50)


def test_no_images_score_nothing():
    assert scores(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)) == dict(
        accuracy_top1=None, accuracy_top5=None, test_images=0
    )
    empty = Scorer(4).result()
    assert (empty.top1, empty.images) == (0.0, 0)


def test_a_top1_hit_is_always_a_top5_hit_on_tied_logits():
    # Ten tied logits: argmax and topk pick different classes for the tie, so a top-1 counted by argmax could
    # be a top-5 miss. Whichever class the scorer predicts, it is one of its top-5.
    for label in range(10):
        result = eval_result(torch.zeros(3, 10), torch.full((3,), label), 10)
        assert result.top1 <= result.top5, f"class {label}: top-1 {result.top1} but top-5 {result.top5}"


def test_labels_beyond_the_models_outputs_are_refused_in_words():
    logits, labels = _batch(seed=3)
    labels[4] = 9
    with pytest.raises(UserError, match="7 outputs for 7 classes and the labels run from .* to 9"):
        scores(logits, labels)
    with pytest.raises(UserError, match="the model's head does not fit this dataset"):
        Scorer(10).add(logits, labels)
