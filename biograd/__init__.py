"""biograd: biologically-plausible learning rules for any PyTorch model.

    model = torchvision.models.resnet18()
    biograd.convert(model, "ss", last="bp")     # sign-symmetry everywhere, classifier on bp
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()
        opt.step(); opt.zero_grad()
        biograd.after_step(model)                # wm's mirror pass, sign_fixed's and Dale's clamps
    biograd.weight_angles(model)                 # {layer: degrees between W and B}
"""

from biograd import nn, optim, rules
from biograd.alignment import angle, cross_entropy_loss, gradient_angles, weight_angles
from biograd.convert import (
    Report,
    after_step,
    attach,
    convert,
    exclude_feedback_from_ddp,
    feedback_buffers,
    feedback_layers,
    report,
    unconvert,
)
from biograd.dale import dale
from biograd.nn.functional import double_backward
from biograd.rules import Rule, get_rule, list_rules, register
from biograd.rules.dfa import error_source
from biograd.rules.drtp import targets
from biograd.unshare import unshare, unshared_bytes

__version__ = "0.1.0"

__all__ = [
    "Report",
    "Rule",
    "after_step",
    "angle",
    "attach",
    "convert",
    "cross_entropy_loss",
    "dale",
    "double_backward",
    "error_source",
    "exclude_feedback_from_ddp",
    "feedback_buffers",
    "feedback_layers",
    "get_rule",
    "gradient_angles",
    "list_rules",
    "nn",
    "optim",
    "register",
    "report",
    "rules",
    "targets",
    "unconvert",
    "unshare",
    "unshared_bytes",
    "weight_angles",
]
