"""Phase two heads' losses: task weights and scales, the year's Huber loss, masks, dropout, class and task weights."""
import numpy as np
import pytest
import torch

from omniart.heads import HeadsError
from omniart.heads.losses import auto_task_weights, combined_loss, inverse_frequency_weights
from omniart.heads.model import MaskDropout, OmniArtHeads
from omniart.heads.config import parse_task_weights

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_combined_loss_weights_and_scales_on_hand_made_tensors():
    outputs = {"artist": torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "type": torch.tensor([[0.0, 0.0]]).repeat(2, 1),
               "year": torch.tensor([1600.0, 1700.0])}
    targets = {"artist": torch.tensor([0, 1]), "type": torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8),
               "year": torch.tensor([1650.0, 1690.0])}
    masks = {task: torch.tensor([True, True]) for task in outputs}
    total, per_task = combined_loss(outputs, targets, masks, {"artist": 2.0, "type": 1.0, "year": 0.5}, {"year": 0.1})
    artist = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    assert per_task["artist"].item() == pytest.approx(artist, rel=1e-5)
    assert per_task["type"].item() == pytest.approx(2 * np.log(2.0), rel=1e-5)  # BCE summed over the 2 classes
    assert per_task["year"].item() == pytest.approx(30.0)  # mean(|1600-1650|, |1700-1690|) in years
    assert total.item() == pytest.approx(2.0 * artist + 2 * np.log(2.0) + 0.5 * 0.1 * 30.0, rel=1e-5)


def test_year_huber_loss_is_squared_inside_its_threshold_and_the_mae_beyond():
    years = torch.tensor([1600.0, 1700.0], requires_grad=True)
    targets, masks = {"year": torch.tensor([1650.0, 1690.0])}, {"year": torch.tensor([True, True])}
    _, per_task = combined_loss({"year": years}, targets, masks, year_huber=20.0)
    # |r| = 50 beyond 20 years: 50 - 20 / 2; |r| = 10 within: 10^2 / (2 * 20)
    assert per_task["year"].item() == pytest.approx(((50 - 10) + 100 / 40) / 2)
    per_task["year"].backward()
    # the MAE's gradient (+-1 per row, here / 2 rows) beyond the threshold, r / threshold inside it
    assert years.grad.tolist() == pytest.approx([-0.5, 10 / 20 / 2])
    assert combined_loss({"year": years}, targets, masks)[1]["year"].item() == pytest.approx(30.0)  # 0: the MAE


def test_task_without_labels_in_batch_adds_exactly_zero_loss_and_gradient():
    torch.manual_seed(0)
    model = OmniArtHeads(8, 16, {"artist": 3, "type": 2, "material": 2, "year": 1})
    x = torch.randn(4, 8)
    targets = {"artist": torch.tensor([-1, -1, -1, -1]), "type": torch.tensor([[1, 0]] * 4, dtype=torch.uint8),
               "material": torch.zeros(4, 2, dtype=torch.uint8), "year": torch.full((4,), float("nan"))}
    masks = {"artist": targets["artist"] >= 0, "type": torch.ones(4, dtype=torch.bool),
             "material": torch.zeros(4, dtype=torch.bool), "year": torch.zeros(4, dtype=torch.bool)}
    for log_vars in (None, {t: torch.tensor(0.3, requires_grad=True) for t in masks}):
        model.zero_grad()
        total, per_task = combined_loss(model(x), targets, masks, scales={"year": 0.1}, log_vars=log_vars)
        only_type, _ = combined_loss({"type": model(x)["type"]}, targets, masks, log_vars=log_vars)
        total.backward()
        assert per_task["artist"].item() == per_task["material"].item() == per_task["year"].item() == 0.0
        assert total.item() == pytest.approx(only_type.item())
        for task in ("artist", "material", "year"):
            head = model.heads[f"{task}_head"]
            assert torch.count_nonzero(head.weight.grad) == 0 and torch.isfinite(head.weight.grad).all()
            if log_vars is not None:
                assert log_vars[task].grad.item() == 0.0
        assert torch.count_nonzero(model.heads["type_head"].weight.grad) > 0


def test_mask_dropout_keeps_nn_dropouts_contract():
    """Drop rate p (rounded to 1/65536), kept values scaled to keep the mean, identity in eval mode and at p = 0,
    the input's dtype, a seeded mask, and one mask for every member under vmap(randomness="same")."""
    from torch.func import vmap

    dropout = MaskDropout(0.25).train()
    x = torch.ones(1000, 1001)
    torch.manual_seed(0)
    y = dropout(x)
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.003
    assert torch.unique(y).tolist() == [0.0, pytest.approx(4 / 3)]
    assert abs(float(y.mean()) - 1.0) < 0.005
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # the global generator's stream, which run_epochs seeds
    assert dropout.eval()(x) is x and MaskDropout(0.0).train()(x) is x
    assert MaskDropout(1 - 1e-9).threshold == 65535  # every value but one in 65,536 dropped, never a division by 0
    dropout.train()
    half = torch.randn(3, 7, dtype=torch.bfloat16, requires_grad=True)
    out = dropout(half)
    out.sum().backward()
    assert out.dtype == half.grad.dtype == torch.bfloat16
    assert torch.equal(half.grad == 0, out.detach() == 0)  # the gradient passes where the value was kept
    stacked = torch.randn(3, 5, 9)
    torch.manual_seed(1)
    members = vmap(dropout, randomness="same")(stacked)
    torch.manual_seed(1)
    assert torch.equal(members[2], dropout(stacked[2]))
    assert torch.equal(members[0] == 0, members[1] == 0)


def test_inverse_frequency_class_weights():
    weights = inverse_frequency_weights(torch.tensor([0, 0, 0, 1, -1]), 3)
    assert torch.allclose(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))  # N / (A * count); unseen class 0
    outputs = {"artist": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    targets, masks = {"artist": torch.tensor([0, 1])}, {"artist": torch.tensor([True, True])}
    _, per_task = combined_loss(outputs, targets, masks, class_weights=torch.tensor([1.0, 3.0, 0.0]))
    rows = torch.nn.functional.cross_entropy(outputs["artist"], targets["artist"], reduction="none")
    assert per_task["artist"].item() == pytest.approx(((rows[0] + 3 * rows[1]) / 4).item())


def test_auto_task_weights_rule():
    weights = auto_task_weights({"artist": 2.0, "type": 0.5, "year": 40.0}, {"year": 0.1})
    # scaled validation losses 2, 0.5, 4 -> w proportional to 1/l, summing to 3 tasks; every w_i * l_i equal
    assert sum(weights.values()) == pytest.approx(3.0)
    assert weights["artist"] * 2.0 == pytest.approx(weights["type"] * 0.5) == pytest.approx(weights["year"] * 4.0)
    # a nearly solved task is floored at a tenth of the largest loss: weights at most 10x apart
    capped = auto_task_weights({"artist": 2.0, "type": 1e-6})
    assert capped["type"] == pytest.approx(10 * capped["artist"]) and sum(capped.values()) == pytest.approx(2.0)


def test_parse_task_weights():
    tasks = ("artist", "type", "year")
    assert parse_task_weights("auto", tasks, 6144) == "auto"
    # balanced: the year weighs min(max(1, H / 256), 1024 / H): 1 in narrow layers, 2 at 512, falling beyond
    assert parse_task_weights("balanced", tasks, 1024) == {"artist": 1.0, "type": 1.0, "year": 1.0}
    assert parse_task_weights("balanced", tasks, 6144)["year"] == pytest.approx(1 / 6, abs=1e-6)
    assert parse_task_weights("balanced", tasks, 2048)["year"] == 0.5
    assert parse_task_weights("balanced", tasks, 512)["year"] == 2.0
    assert parse_task_weights("balanced", tasks, 384)["year"] == 1.5
    assert parse_task_weights("balanced", tasks, 64)["year"] == parse_task_weights("balanced", tasks, 256)["year"] == 1.0
    # without a shared layer no task's gradient reaches another: the year keeps weight 1
    assert parse_task_weights("balanced", tasks, 0)["year"] == 1.0
    assert parse_task_weights("balanced", ("artist",), 1024) == {"artist": 1.0}  # a fit without the year
    assert parse_task_weights("equal", tasks, 6144) == {"artist": 1.0, "type": 1.0, "year": 1.0}
    assert parse_task_weights("artist=2,year=0.5", tasks, 6144) == {"artist": 2.0, "type": 1.0, "year": 0.5}
    for bad, text in (("colour=1", "colour"), ("artist=heavy", "'heavy'"), ("artist", "TASK=NUMBER")):
        with pytest.raises(HeadsError, match=text):
            parse_task_weights(bad, tasks, 6144)
