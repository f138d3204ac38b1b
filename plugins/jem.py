"""JEM, Joint Energy-based Model training: Grathwohl, Wang, Jacobsen, Duvenaud, Norouzi, Swersky, "Your
Classifier is Secretly an Energy Based Model and You Should Treat it Like One", ICLR 2020, arXiv:1912.03263.

The classifier's logits f(x) also define an energy E(x) = -logsumexp_y f(x)[y], so p(x) is proportional to
exp(LSE f(x)) while p(y|x) = softmax(f(x)) is unchanged. Each training step minimizes

    L = CE(f(x), y) + weight_x * (mean LSE f(x_sampled) - mean LSE f(x))

where x_sampled comes from ``steps`` SGLD steps x <- x + step_size * grad_x LSE f(x) + noise * N(0, I)
(step size and noise set independently, as in the paper's code), started from a persistent replay buffer of
``buffer_size`` images; each chain starts from fresh uniform noise instead with probability ``reinit``. The
final samples are written back to the buffer rows they came from and enter the loss detached, so the
generative term trains the model only. As in the paper's code, the labelled batch x gets Gaussian noise of
std ``data_noise``; ``weight_x = 0`` leaves the cross-entropy on that noisy batch (the sampler is not run),
which is plain cross-entropy training only with ``data_noise = 0`` too.

Defaults: the paper's step size 1, noise 0.01, reinit 0.05, weight 1 and data noise 0.03; the paper's K = 20
steps and 10 000 buffer images are cut to CPU-friendly ``steps = 5`` and ``buffer_size = 1000`` (about
(steps + 2) times the compute of plain training).

Choices made here (the paper's code uses inputs in [-1, 1]; autonorm standardizes them per channel):

- ``step_size``, ``noise`` and ``data_noise`` are in the paper's units, those of data in [-1, 1]. The data's
  range [min, max] of the training split is taken as the image of [-1, 1], so input z = k x + c with
  k = (max - min) / 2; since grad_z = grad_x / k, the same Langevin dynamics in z take the step size
  ``step_size * k**2`` and the noises ``noise * k`` and ``data_noise * k`` (for data in [-1, 1], k = 1);
- the buffer lives on the data's device; it and the fresh chains are uniform over [min, max] (the image of
  the paper's U(-1, 1));
- SGLD runs with the model in eval mode (as the paper's code), which is restored afterwards; the two energy
  terms and the cross-entropy are computed in the model's training mode, the data term and the
  cross-entropy from one forward pass;
- evaluation is on clean inputs; the paper's code adds the data noise to its test images too (u);
- JEM assumes no batch-dependent normalization (batch norm makes LSE f(x) depend on the rest of the batch
  and breaks the energy): the component excludes ``normalization:batchnorm``, and :meth:`JEM.setup` fails
  the trial for any other batch-dependent module;
- the paper's learning-rate warm-up and |L| > 1e8 divergence guard are left to the trainer (its schedule,
  and its check that the loss stays finite); the buffer is not saved with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import autonorm
from autonorm import Component, Float, Int, TrainingMethod
from autonorm.errors import TrialFailed
from autonorm.routing import is_batch_dependent


def sgld_step(model: nn.Module, x: torch.Tensor, step_size: float, noise: float) -> torch.Tensor:
    """x + step_size * grad_x LSE f(x) + noise * N(0, I); parameter gradients are not touched."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    return (x + step_size * grad + noise * torch.randn_like(x)).detach()


class JEM(TrainingMethod):
    """Classifier cross-entropy plus the energy-based term on SGLD samples from a persistent replay buffer."""

    def __init__(
        self,
        steps: int = 5,
        step_size: float = 1.0,
        noise: float = 0.01,
        reinit: float = 0.05,
        buffer_size: int = 1000,
        weight_x: float = 1.0,
        data_noise: float = 0.03,
    ) -> None:
        self.steps, self.step_size, self.noise, self.reinit = steps, step_size, noise, reinit
        self.buffer_size, self.weight_x, self.data_noise = buffer_size, weight_x, data_noise

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.low, self.high = x.min(), x.max()
        self.scale = (self.high - self.low) / 2  # k: the data's range is the image of the paper's [-1, 1]
        self.shape = x.shape[1:]
        self.buffer = self.uniform(self.buffer_size, x.device)

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        dependent = [type(m).__name__ for m in model.modules() if is_batch_dependent(m)]
        if dependent:
            raise TrialFailed(f"jem needs a model without batch-dependent normalization; found {dependent[0]}")

    def uniform(self, n: int, device: torch.device) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand(n, *self.shape, device=device)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data_noise == 0:
            return x, y
        return x + self.data_noise * self.scale * torch.randn_like(x), y

    def initial_chains(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` buffer rows drawn with replacement, each replaced by fresh noise with probability ``reinit``;
        and the drawn indices."""
        device = self.buffer.device
        idx = torch.randint(len(self.buffer), (n,), device=device)
        fresh = (torch.rand(n, device=device) < self.reinit).view(-1, *[1] * len(self.shape))
        return torch.where(fresh, self.uniform(n, device), self.buffer[idx]), idx

    def sample(self, model: nn.Module, n: int) -> torch.Tensor:
        """``n`` SGLD samples from the buffer (model in eval mode); written back to the buffer, detached.
        The step size and noise are the paper's, converted to the data's scale k."""
        x, idx = self.initial_chains(n)
        step_size, noise = self.step_size * self.scale**2, self.noise * self.scale
        training = model.training
        model.eval()
        for _ in range(self.steps):
            x = sgld_step(model, x, step_size, noise)
        model.train(training)
        self.buffer[idx] = x
        return x

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if self.weight_x == 0:
            return loss
        sampled = self.sample(model, len(x))
        return loss + self.weight_x * (model(sampled).logsumexp(1).mean() - logits.logsumexp(1).mean())


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="jem",
            factory=JEM,
            params={
                "steps": Int(5, 1, 40, log=True),
                "step_size": Float(1.0, 0.01, 10.0, log=True),
                "noise": Float(0.01, 0.001, 0.1, log=True),
                "reinit": Float(0.05, 0.0, 0.5),
                "buffer_size": Int(1000, 64, 10000, log=True),
                "weight_x": Float(1.0, 0.0, 2.0),
                "data_noise": Float(0.03, 0.0, 0.1),
            },
            excludes=("normalization:batchnorm",),
        )
    ]
