"""dfa: the output error projected to each layer, and nothing through the weights above.

The identity (Nøkland 2016): in an MLP under dfa, each hidden layer's weight gradient is the
projected output error, masked by its activation's derivative, times its input; the error a
layer sends down is B e whatever the weights above it are.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.rules import dfa


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 4))


def inputs_of(model, names):
    """{name: the input tensor of module `name` at the next forward, with its .grad kept}."""
    seen, handles = {}, []
    for name in names:
        def keep(module, args, name=name):
            args[0].retain_grad()
            seen[name] = args[0]
        handles.append(model.get_submodule(name).register_forward_pre_hook(keep))
    return seen, handles


@pytest.mark.parametrize("last", ["dfa", "bp"])
def test_hidden_layers_learn_from_the_projected_output_error_exactly(last):
    model = biograd.convert(mlp(), "dfa", last=last, seed=3)
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    seen, _ = inputs_of(model, ["2", "4"])
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    e = out.grad  # (N, K): the output error
    a1, a2 = model[0](x).detach(), model[2](seen["2"]).detach()

    # the error each dfa layer sends down is B e: no weight above it takes part
    sent = {"2": seen["2"].grad, "4": seen["4"].grad}
    torch.testing.assert_close(sent["2"], e @ model[2].feedback_weight(), rtol=1e-6, atol=1e-7)
    if last == "dfa":
        torch.testing.assert_close(sent["4"], e @ model[4].feedback_weight(), rtol=1e-6,
                                   atol=1e-7)
    else:  # the classifier on bp sends Wᵀe, backprop's own
        torch.testing.assert_close(sent["4"], e @ model[4].weight, rtol=1e-6, atol=1e-7)
    # each layer's weight gradient: the error arriving at its output times its input, exactly
    assert torch.equal(model[0].weight.grad, (sent["2"] * (a1 > 0)).T @ x)
    assert torch.equal(model[2].weight.grad, (sent["4"] * (a2 > 0)).T @ seen["2"].detach())
    assert torch.equal(model[4].weight.grad, e.T @ seen["4"].detach())
    assert torch.equal(model[0].bias.grad, (sent["2"] * (a1 > 0)).sum(0))


def convs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1))


@pytest.mark.parametrize("end", ["a dfa Linear", "a dfa Conv2d", "an op after the last layer"])
def test_each_backward_of_one_graph_sends_its_own_losss_b_e(end):
    """e is taken where the backward passes ŷ: in the backward of the dfa layer whose output
    ŷ is, or by a hook on ŷ's node; either way each backward through a kept graph sends the B e
    of its own loss."""
    model, x = (convs(), torch.randn(2, 2, 5, 5)) if end == "a dfa Conv2d" else (mlp(),
                                                                                torch.randn(5, 6))
    if end == "an op after the last layer":
        model = nn.Sequential(*model, nn.Tanh())
    model = biograd.convert(model, "dfa", last="dfa", seed=3)
    seen, _ = inputs_of(model, ["2"])
    out = model(x)
    out.retain_grad()
    for i in range(2):
        g = torch.randn(out.shape)
        seen["2"].grad = out.grad = None
        (out * g).sum().backward(retain_graph=i == 0)
        e = out.grad.flatten(1)
        assert torch.equal(e, g.flatten(1))
        b = model[2].feedback_weight().flatten(1)
        torch.testing.assert_close(seen["2"].grad, (e @ b).view(seen["2"].shape), rtol=1e-5,
                                   atol=1e-6)


def test_the_weights_above_do_not_change_what_a_layer_learns():
    x, g = torch.randn(5, 6), torch.randn(5, 4)
    grads = {}
    for rule in ("dfa", "bp"):
        for other in (False, True):
            model = biograd.convert(mlp(), rule, seed=3)
            if other:  # new weights between the first layer and the output
                with torch.no_grad():
                    model[2].weight.normal_()
                    model[4].weight.normal_()
            (model(x) * g).sum().backward()  # e = g whatever the weights
            grads[rule, other] = model[0].weight.grad
    assert torch.equal(grads["dfa", False], grads["dfa", True])
    assert not torch.allclose(grads["bp", False], grads["bp", True])  # backprop's do


def test_b_has_the_norm_of_an_isometry_and_comes_from_the_seed():
    model = biograd.convert(nn.Sequential(nn.Linear(4096, 64), nn.ReLU(), nn.Linear(64, 10)),
                            "dfa", seed=1)
    x = torch.randn(3, 4096)
    model(x).sum().backward()
    b = model[2].feedback_weight()  # (10, 64)
    assert b.shape == (10, 64)
    e = torch.randn(200, 10)
    ratio = (e @ b).square().sum(1) / e.square().sum(1)
    assert ratio.mean().item() == pytest.approx(1, rel=0.25)  # E‖Be‖² = ‖e‖², d = 64
    # the same seed, another model object: the same B; another seed: another
    again = biograd.convert(copy.deepcopy(model), "fa", seed=1)
    biograd.convert(again, "dfa", seed=1)
    again(x).sum().backward()
    assert torch.equal(again[2].feedback_weight(), b)
    other = biograd.convert(nn.Sequential(nn.Linear(4096, 64), nn.ReLU(), nn.Linear(64, 10)),
                            "dfa", seed=2)
    other(x).sum().backward()
    assert not torch.equal(other[2].feedback_weight(), b)


def test_the_table_is_as_long_as_the_largest_layer_needs_not_their_sum():
    model = biograd.convert(torchvision_resnet(), "dfa", seed=0)
    x = torch.randn(2, 3, 64, 64)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()  # K = 100
    (table,) = model.__dict__["_biograd_error_source"].tables.values()
    sizes = [math.prod(layer.feedback_shape) for _, layer in biograd.feedback_layers(model)
             if "feedback_shape" in layer.__dict__]
    assert len(sizes) == 20  # every layer but the stem sent an error down
    # the longest window (64·16·16 inputs by 100 classes) and its offset, in whole chunks
    assert max(sizes) <= table.numel() <= 2 * max(sizes) + dfa.CHUNK
    assert table.numel() < sum(sizes) / 4


def torchvision_resnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=100)


def test_a_model_with_several_outputs_names_its_error_source():
    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x)
            return {"logits": self.head(h), "features": h}

    model = biograd.convert(TwoOutputs(), "dfa")
    with pytest.raises(TypeError, match=r"returned dict.*biograd.error_source\(model"):
        model(torch.randn(2, 6))
    biograd.error_source(model, "head")
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    logits = model(x)["logits"]
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    h = model.body[0](x).detach()
    sent = logits.grad @ model.head.feedback_weight()
    torch.testing.assert_close(model.body[0].weight.grad, (sent * (h > 0)).T @ x)
    with pytest.raises(ValueError, match="no module 'heads'"):
        biograd.error_source(model, "heads")


class Recorded(nn.Module):
    """An MLP run at T steps in one forward, returning (its hidden record, its output record),
    (T, N, ·) each, or those as attributes of an object no walker knows."""

    def __init__(self, as_object=False):
        super().__init__()
        self.body, self.as_object = mlp(), as_object

    def forward(self, x):  # x (T, N, 6)
        hidden = torch.stack([self.body[:4](x_t) for x_t in x])
        out = torch.stack([self.body[4](h) for h in hidden])
        if self.as_object:
            return type("Out", (), {"hidden": hidden, "out": out})()
        return hidden, out


@pytest.mark.parametrize("output", [1, "function of an object"])
def test_a_record_over_time_gives_the_summed_error_to_every_step(output):
    """ŷ picked from the output (an index, or a function of an object), stacked over time:
    e = Σ_t ∂L/∂ŷ_t, and each step's call of the last layer sends B e."""
    model = biograd.convert(Recorded(as_object=output != 1), "dfa", seed=2)
    biograd.error_source(model, output=output if output == 1 else lambda o: o.out, time_dim=0)
    sent = []
    model.body[4].register_full_backward_hook(lambda _, into, __: sent.append(into[0]))
    result = model(torch.randn(3, 5, 6))
    out = result[1] if output == 1 else result.out
    out.retain_grad()
    y = torch.randint(0, 4, (5,))
    sum(F.cross_entropy(o, y) for o in out).backward()
    assert len(sent) == 3
    for got in sent:
        torch.testing.assert_close(got, out.grad.sum(0) @ model.body[4].feedback_weight(),
                                   rtol=1e-6, atol=1e-7)


def test_misuse_says_what_to_do():
    model = biograd.convert(mlp(), "dfa")
    with pytest.raises(RuntimeError, match="run a forward and backward first"):
        model[2].feedback_weight()
    loose = biograd.nn.Linear(4, 4, rule="dfa")  # a layer on dfa with no model around it
    with pytest.raises(RuntimeError, match=r"convert the whole model"):
        loose(torch.randn(2, 4, requires_grad=True)).sum().backward()
    x = torch.randn(3, 5, 6)  # (T, N, E): the batch is not first
    seq_first = biograd.convert(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2),
                                              nn.Flatten(0, 1)), "dfa")
    with pytest.raises(RuntimeError, match="needs the batch first"):
        seq_first(x.transpose(0, 1)).sum().backward()  # (N=5, T=3): fine
        seq_first(x.requires_grad_()).view(3, 5, 2).transpose(0, 1).sum().backward()


def test_an_output_modified_in_place_gives_e_unless_it_is_a_view():
    # rules.md: modified in place, the output still gives e, unless it is a view
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    grads = []
    for scale in ("in place", "a copy"):
        model = biograd.convert(mlp(), "dfa", last="dfa", seed=0)
        out = model(x)
        out = out.mul_(2) if scale == "in place" else out * 2
        F.cross_entropy(out, y).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    viewed = biograd.convert(nn.Sequential(mlp(), nn.Unflatten(1, (2, 2))), "dfa", seed=0)
    with pytest.raises(RuntimeError, match="not modified in place"):
        viewed(x).mul_(2).sum().backward()


def test_copies_unconvert_and_release_leave_no_hooks_behind():
    model = biograd.convert(mlp(), "dfa", seed=0)
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 6), torch.randint(0, 4, (4,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x), y).backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    assert twin[2].__dict__["error_source"] is twin.__dict__["_biograd_error_source"]
    assert twin.__dict__["_biograd_error_source"] is not model.__dict__["_biograd_error_source"]
    biograd.unconvert(model)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert "_biograd_error_source" not in model.__dict__


def test_autocast_projects_in_the_compute_dtype_and_returns_input_dtypes():
    model = biograd.convert(mlp(), "dfa")
    x, y = torch.randn(4, 6), torch.randint(0, 4, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert (torch.bfloat16 in {dtype for _, dtype in
                               model.__dict__["_biograd_error_source"].tables})


def test_converting_more_layers_later_gives_them_the_models_error():
    model = biograd.convert(mlp(), "dfa", include="4", seed=0)  # the classifier first
    biograd.convert(model, "dfa", seed=0)  # then the rest: the same error source
    source = model.__dict__["_biograd_error_source"]
    assert all(layer.__dict__.get("error_source") is source
               for _, layer in biograd.feedback_layers(model))
    F.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_wrong_source_name_leaves_the_model_as_it_was():
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    model, fresh = biograd.convert(mlp(), "dfa", seed=0), biograd.convert(mlp(), "dfa", seed=0)
    F.cross_entropy(model(torch.randn(3, 6)), torch.randint(0, 4, (3,))).backward()
    model.zero_grad()
    with pytest.raises(ValueError, match="no module 'nosuch'"):
        biograd.error_source(model, "nosuch")
    for run in (model, fresh):
        F.cross_entropy(run(x), y).backward()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_every_backward_sends_b_e_as_batch_seed_and_table_change_between_them():
    """A layer keeps what its last projection worked out (B's window, its scale): each
    backward still sends its own pass's B e, with the B of the layer's seed at that time."""
    model = biograd.convert(mlp(), "dfa", seed=3)
    other = biograd.convert(mlp(), "dfa", seed=4)
    sent = []
    for n, load in ((5, None), (5, None), (3, None), (3, other), (5, None)):
        if load is not None:  # the seeds, hence B, change with the state loaded
            model.load_state_dict(load.state_dict())
        x, y = torch.randn(n, 6), torch.randint(0, 4, (n,))
        seen, handles = inputs_of(model, ["2"])
        out = model(x)
        out.retain_grad()
        F.cross_entropy(out, y).backward()
        for handle in handles:
            handle.remove()
        b = model[2].feedback_weight()
        torch.testing.assert_close(seen["2"].grad, out.grad @ b, rtol=1e-6, atol=1e-7)
        sent.append(b)
    assert torch.equal(sent[0], sent[2]) and not torch.equal(sent[2], sent[3])
    biograd.convert(model, "fa")  # no layer keeps a window of the table it dropped
    assert not any("_cached_projection" in m.__dict__ for m in model.modules())


def test_leaving_dfa_drops_its_hooks_and_table_and_copies_carry_no_table():
    model = biograd.convert(mlp(), "dfa", seed=0)
    F.cross_entropy(model(torch.randn(3, 6)), torch.randint(0, 4, (3,))).backward()
    assert model._biograd_error_source.tables  # drawn at the first backward
    for copied in (copy.deepcopy(model), pickle_round_trip(model)):
        assert not copied._biograd_error_source.tables
        assert not any("_cached_projection" in m.__dict__ for m in copied.modules())
        F.cross_entropy(copied(torch.randn(3, 6)), torch.randint(0, 4, (3,))).backward()
    biograd.convert(model, "fa")
    assert "_biograd_error_source" not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks


def pickle_round_trip(model):
    import io

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_direct_rule_of_ones_own_sends_its_own_input_gradient():
    """A rule that is `direct` without being one of biograd's projections (no targets, no
    output error of its own to ask for) converts, and its layers send what it gives."""
    from biograd.rules.base import Feedback, Rule

    class Silent(Rule):
        name = "silent_direct"
        direct = True
        reads_output = True

        def bind(self, layer):
            return Feedback(direct=lambda shape: torch.zeros(shape))

    model = biograd.convert(mlp(), Silent(), seed=0)
    F.cross_entropy(model(torch.randn(5, 6)), torch.randint(0, 4, (5,))).backward()
    assert not model[0].weight.grad.any() and not model[2].weight.grad.any()  # zeros sent down
    assert model[4].weight.grad.any()  # the last layer's own gradient, from the loss
