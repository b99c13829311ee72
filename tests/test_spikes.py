"""biograd.spikes: each neuron layer's spike rate, counted by forward hooks, and the
val_spike_rates that classification's evaluation logs for a spiking model (spiking_cnn's in
tests/test_spiking_model.py). Rates checked against neurons whose spikes are known by hand."""

import json

import pytest
import torch
from torch import nn

from biograd.spikes import SpikeCounter, spiking_neurons

pytest.importorskip("spikingjelly.activation_based", reason="needs biograd[spiking]")
pytest.importorskip("snntorch", reason="needs biograd[spiking]")
import snntorch
from spikingjelly.activation_based import functional, neuron


def test_spikingjelly_multi_step_rate_is_the_fraction_of_neuron_steps_that_fired():
    """IF neurons (threshold 1, hard reset) on a current of 0.5 fire every second step; on 0
    never: half the units at 1/2 -> 1/4."""
    net = nn.Sequential(nn.Identity(), neuron.IFNode(step_mode="m"))
    current = torch.zeros(4, 3, 6)  # (T, N, units)
    current[..., :3] = 0.5
    with SpikeCounter(net) as counter:
        net(current)
        functional.reset_net(net)
        net(current[:, :1])  # a second forward, one sample: counted too
    assert counter.names() == ["1"]
    assert counter.rates() == {"1": pytest.approx(0.25)}
    spikes, steps = counter.totals()[0].tolist()
    assert (spikes, steps) == (2 * 3 * 3 + 2 * 1 * 3, 4 * 3 * 6 + 4 * 1 * 6)


def test_snntorch_neuron_called_per_step_counts_its_spikes_not_its_membrane():
    """Leaky (β = 1, threshold 1, subtractive reset) on 0.6 fires at steps 2 and 4 of 4;
    its (spk, mem) output is read at spk."""
    lif = snntorch.Leaky(beta=1.0, threshold=1.0)
    x = torch.full((2, 5), 0.6)
    with SpikeCounter(nn.ModuleDict({"lif": lif})) as counter:
        mem = lif.init_leaky()
        fired = []
        for _ in range(4):
            spk, mem = lif(x, mem)
            fired.append(spk[0, 0].item())
    assert fired == [0.0, 1.0, 0.0, 1.0]
    assert counter.rates() == {"lif": pytest.approx(0.5)}


def test_hooks_come_off_on_exit_and_plain_models_have_no_neurons():
    net = nn.Sequential(nn.Linear(3, 3), neuron.LIFNode(step_mode="m"))
    with SpikeCounter(net) as counter:
        pass
    net(torch.ones(2, 1, 3))
    assert counter.totals()[0, 1].item() == 0  # nothing counted after exit
    assert counter.rates()["1"] != counter.rates()["1"]  # a layer that never ran: NaN
    assert not net[1]._forward_hooks
    assert spiking_neurons(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []


def test_a_module_that_says_it_emits_spikes_is_counted():
    class Spiker(nn.Module):
        emits_spikes = True

        def forward(self, x):
            return (x > 0).float()

    net = nn.Sequential(nn.Linear(2, 2), Spiker())
    assert [name for name, _ in spiking_neurons(net)] == ["1"]
    with SpikeCounter(net) as counter:
        net[1](torch.tensor([[1.0, -1.0, 2.0, 0.0]]))
    assert counter.rates() == {"1": 0.5}


def test_training_logs_no_spike_rates_for_a_model_without_neurons(tmp_path):
    from biograd.cli import main

    out = tmp_path / "mlp"
    assert main(["train", "--data", "digits", "--model", "mlp", "--epochs", "1",
                 "--steps-per-epoch", "1", "--progress", "none", "--tensorboard", "false",
                 "--out", str(out)]) == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_top1" in logged and "val_spike_rates" not in logged


def test_a_recurrent_lif_layers_rates_are_its_spike_rate():
    """RecurrentLIF returns each neuron's mean spike over time: counted as its spikes."""
    from biograd.nn.eprop import RecurrentLIF

    torch.manual_seed(0)
    layer = RecurrentLIF(3, 5, learning="bptt")
    x = torch.randn(6, 4, 3) * 3  # (T, N, I)
    fired = []
    hook = layer.register_forward_hook(lambda m, a, out: fired.append(out * 6))  # spike counts
    with SpikeCounter(nn.ModuleDict({"lif": layer})) as counter:
        layer(x)
    hook.remove()
    assert torch.allclose(fired[0], fired[0].round()) and fired[0].sum() > 0
    assert counter.rates() == {"lif": pytest.approx(fired[0].sum().item() / (6 * 4 * 5))}
