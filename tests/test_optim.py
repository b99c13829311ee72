"""The seed's optimiser variants, checked against the update written out by hand."""

import torch

from biograd.optim import batch_manhattan, no_sign_change


def param_with_grad():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50))
    p.grad = torch.randn(50) * 3
    return p


def test_batch_manhattan_steps_on_the_sign_of_the_gradient():
    p = param_with_grad()
    w, g = p.detach().clone(), p.grad.clone()
    opt = batch_manhattan(torch.optim.SGD([p], lr=0.01, weight_decay=0.1))
    opt.step()
    torch.testing.assert_close(p.detach(), w - 0.01 * (torch.sign(g) + 0.1 * w))


def test_no_sign_change_clamps_only_the_weights_that_would_flip():
    p = param_with_grad()
    w, g = p.detach().clone(), p.grad.clone()
    opt = no_sign_change(torch.optim.SGD([p], lr=0.5))
    opt.step()
    plain = w - 0.5 * g
    flipped = torch.sign(plain) != torch.sign(w)
    assert flipped.any() and (~flipped).any()
    assert torch.equal(p.detach()[~flipped], plain[~flipped])
    assert torch.equal(p.detach()[flipped], torch.copysign(torch.full_like(w, 1e-10), w)[flipped])


def test_variants_compose_and_keep_the_optimizer_usable_by_schedulers():
    p = param_with_grad()
    opt = no_sign_change(batch_manhattan(torch.optim.SGD([p], lr=0.1, momentum=0.9)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    signs = torch.sign(p.detach())
    for _ in range(3):
        p.grad = torch.randn(50) * 10
        opt.step()
        sched.step()
        assert torch.equal(torch.sign(p.detach()), signs)
    assert opt.param_groups[0]["lr"] < 0.1 * 0.1 * 0.1 + 1e-12
