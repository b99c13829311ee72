"""The spike rate of each layer of spiking neurons: the fraction of its neurons' time steps
that fire, counted over forwards.

    with SpikeCounter(model) as counter:
        model(x)
    counter.rates()  # {"features.unit1.2": 0.083, ...}

The neurons counted: spikingjelly's (`neuron.BaseNode`: LIFNode, IFNode, ...), snntorch's
(`SpikingNeuron`: Leaky, Synaptic, ...) and any module whose class sets `emits_spikes = True`.
A neuron's output is its spikes (0 or 1), or a tuple whose first item is (snntorch's
(spk, mem)), or each neuron's rate over the forward's time steps (biograd.nn.eprop's
RecurrentLIF); its mean over every element is the rate: over time steps, samples and units
for a multi-step output (T, N, ...), over the calls for a neuron called once per step. A model
without neurons has no rates ({}); neither library is imported to find out (a model can hold
their neurons only if they are already loaded).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn


def neuron_types() -> tuple[type, ...]:
    """The spiking libraries' neuron base classes, of those already imported."""
    kinds = []
    sj = sys.modules.get("spikingjelly.activation_based.neuron")
    if sj is not None:
        kinds.append(sj.BaseNode)
    snn = sys.modules.get("snntorch")
    if snn is not None:
        kinds.append(snn.SpikingNeuron)
    return tuple(kinds)


def spiking_neurons(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every neuron layer in model, in module order."""
    kinds = neuron_types()
    return [(name, m) for name, m in model.named_modules()
            if (kinds and isinstance(m, kinds)) or getattr(type(m), "emits_spikes", False)]


class SpikeCounter:
    """Counts each neuron layer's spikes and neuron-steps while entered (forward hooks).

    `totals()`: {name: (spikes, neuron-steps)} as a float64 tensor (L, 2) on the device the
    outputs were on (to sum over DDP ranks), with `names()` its rows; `rates()` the ratios.
    """

    def __init__(self, model: nn.Module) -> None:
        self._neurons = spiking_neurons(model)
        self._sums: dict[str, list[Tensor | float]] = {n: [0.0, 0.0] for n, _ in self._neurons}
        self._hooks: list = []

    def names(self) -> list[str]:
        return [name for name, _ in self._neurons]

    def __enter__(self) -> SpikeCounter:
        for name, module in self._neurons:
            self._hooks.append(module.register_forward_hook(self._counter(name)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _counter(self, name: str):
        def count(module: nn.Module, args, output) -> None:
            spikes = output[0] if isinstance(output, (tuple, list)) else output
            total = self._sums[name]
            # summed on the device, read once at the end (no host sync per forward)
            total[0] = total[0] + spikes.detach().sum(dtype=torch.float64)
            total[1] += spikes.numel()
        return count

    def totals(self, device: torch.device | str = "cpu") -> Tensor:
        rows = [[float(spikes), float(steps)] for spikes, steps in self._sums.values()]
        return torch.tensor(rows, dtype=torch.float64, device=device).reshape(len(rows), 2)

    def rates(self, totals: Tensor | None = None) -> dict[str, float]:
        """{name: spikes / neuron-steps} (NaN for a layer that never ran)."""
        totals = self.totals() if totals is None else totals
        return {name: (s / n if n else float("nan"))
                for name, (s, n) in zip(self.names(), totals.tolist(), strict=True)}
