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


def test_kp_decay_shrinks_w_minus_b_by_one_minus_lr_decay_per_step():
    import biograd
    from biograd.optim import weight_decay_groups

    layer = biograd.nn.Linear(6, 4)
    biograd.convert(layer, biograd.get_rule("kp", decay=0.1), seed=0)
    head = torch.nn.Linear(4, 2)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), head)
    groups = weight_decay_groups(model, [{"params": list(model.parameters()), "lr": 0.5}])
    own = [g for g in groups if "weight_decay" in g]
    assert [set(map(id, g["params"])) for g in own] == [{id(layer.weight), id(layer.feedback)}]
    assert all(g["lr"] == 0.5 for g in groups)  # the source group's options are kept
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(map(id, model.parameters()))  # each parameter once

    opt = torch.optim.SGD(groups, lr=0.5, weight_decay=1e-4)
    before = (layer.weight - layer.feedback).detach().clone()
    model(torch.randn(8, 6)).square().mean().backward()
    assert torch.equal(layer.feedback.grad, layer.weight.grad)
    opt.step()
    after = (layer.weight - layer.feedback).detach()
    torch.testing.assert_close(after, (1 - 0.5 * 0.1) * before)
    # the rest of the model keeps the optimiser's own decay
    (plain,) = [g for g in opt.param_groups if any(p is head.weight for p in g["params"])]
    assert plain["weight_decay"] == 1e-4


def test_weight_decay_groups_take_params_as_one_tensor_or_any_iterable_as_torch_does():
    import biograd
    from biograd.optim import weight_decay_groups

    layer = biograd.convert(biograd.nn.Linear(6, 4), biograd.get_rule("kp", decay=0.1), seed=0)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(4, 2))
    params = list(model.parameters())

    def summary(groups):
        return [([id(p) for p in g["params"]], g.get("weight_decay"), g["lr"]) for g in groups]

    as_lists = summary(weight_decay_groups(model, [{"params": [p], "lr": 0.5} for p in params]))
    assert sorted(i for ids, decay, _ in as_lists if decay == 0.1 for i in ids) == sorted(
        [id(layer.weight), id(layer.feedback)])  # kp's decay on both its W and B
    single = weight_decay_groups(model, [{"params": p, "lr": 0.5} for p in params])
    assert summary(single) == as_lists
    torch.optim.SGD(single, lr=0.1)  # every parameter a leaf, none split into its rows
    one_list = summary(weight_decay_groups(model, [{"params": params, "lr": 0.5}]))
    assert [decay for _, decay, _ in one_list] == [None, 0.1]
    for given in (tuple(params), (p for p in params)):  # a generator is read once
        assert summary(weight_decay_groups(model, [{"params": given, "lr": 0.5}])) == one_list


def test_weight_decay_groups_leave_models_without_their_own_decay_alone():
    import biograd
    from biograd.optim import weight_decay_groups

    model = biograd.convert(torch.nn.Sequential(torch.nn.Linear(3, 3)), "kp")
    (group,) = weight_decay_groups(model)
    assert "weight_decay" not in group and len(group["params"]) == len(list(model.parameters()))


def test_attach_runs_after_step_once_per_optimiser_step_until_removed():
    import biograd

    model = biograd.convert(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                            "wm", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = biograd.attach(opt, model)
    assert biograd.attach(opt, model) is handle  # once, however often attached
    steps = [int(layer.feedback_step) for _, layer in biograd.feedback_layers(model)]
    for _ in range(3):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    after = [int(layer.feedback_step) for _, layer in biograd.feedback_layers(model)]
    assert after == [s + 3 for s in steps]  # one mirror pass per step
    handle.remove()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert [int(layer.feedback_step) for _, layer in biograd.feedback_layers(model)] == after
