"""The engine's step: which precisions get loss scaling, and what a step does with a non-finite loss."""
import warnings

import pytest
import torch

from caspl_plugin.engine import PRECISIONS, grad_scaler, make_optimizer, training_step


def test_loss_scaling_exactly_where_float16_runs_on_cuda():
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], 0.1)
    for precision in PRECISIONS:
        assert grad_scaler(optimizer, "cpu", precision) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA scaler on a machine without CUDA warns and disables itself
        on_cuda = {precision: grad_scaler(optimizer, "cuda", precision) is not None for precision in PRECISIONS}
        assert grad_scaler(optimizer, "cuda", "fp16") is grad_scaler(optimizer, "cuda", "amp")  # one per optimizer
    assert on_cuda == {"fp32": False, "amp": True, "bf16": False, "fp16": True}


def test_a_non_finite_loss_stops_the_step_before_the_update():
    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def loss(self, images, labels):
            loss = (self.weight * images).sum() * float("nan")
            return loss, {"loss": loss}

    objective = Objective()
    optimizer = make_optimizer(objective.parameters(), 0.1)
    with pytest.raises(FloatingPointError, match="nan"):
        training_step(objective, torch.ones(2), None, optimizer)
    assert torch.equal(objective.weight.detach(), torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="loss scaling is a CUDA matter")
@pytest.mark.parametrize("precision", ["amp", "fp16"])
def test_float16_on_cuda_trains_through_the_loss_scaler(precision):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3).cuda()

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def loss(self, images, labels):
            logits = self.model(images)
            assert logits.dtype == torch.float16  # autocast computes in float16
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return loss, {"loss": loss.detach()}

    objective = Objective()
    optimizer = make_optimizer(objective.parameters(), 0.1)
    before = model.weight.detach().clone()
    training_step(objective, torch.randn(4, 8, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda"), optimizer, precision)
    scaler = grad_scaler(optimizer, "cuda", precision)
    assert scaler is not None and scaler.is_enabled() and scaler.get_scale() == 65536.0
    assert not torch.equal(before, model.weight.detach())
