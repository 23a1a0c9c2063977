"""The DDPM noise schedule and the PLMS sampler used to reconstruct images.

Conventions follow latent-diffusion, the code the paper was built on:

- T = 1000 training timesteps t = 0..T-1; ``alphas_cumprod[t]`` is the signal level *after*
  step t, so even t = 0 adds a little noise.
- The "linear" schedule is linear in sqrt(beta):
  ``betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``.
- The model predicts the noise eps (eps-parameterisation, the paper's); ``v`` (v-prediction,
  Salimans and Ho 2022) and ``x0`` (the clean sample) are trained on request and converted to eps
  wherever a sampler or detector uses the model (:func:`eps_from_prediction`).

The schedule is held in float64 (as improved-diffusion does) and cast when used.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Names of the two schedules: linear in sqrt(beta) (latent-diffusion's "linear", the paper's; diffusers'
# "scaled_linear"; MONAI's "scaled_linear_beta") and linear in beta (the original DDPM's; diffusers'
# "linear"; MONAI's "linear_beta"). "linear" means the first in a latent-diffusion config (ours) and the
# second everywhere else: the command line refuses it (``ddpm_ood.cli.beta_schedule_name``).
SQRT_LINEAR = ("linear", "scaled_linear", "scaled_linear_beta")
PLAIN_LINEAR = ("plain_linear", "linear_beta")
BETA_SCHEDULES = SQRT_LINEAR + PLAIN_LINEAR

# What the network's output is trained as: latent-diffusion's names (the config's ``parameterization``)
# and diffusers' / MONAI's (``--prediction_type``, a Network's ``prediction``).
PREDICTION_NAMES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
PREDICTIONS = tuple(PREDICTION_NAMES.values())


def make_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Return the float64 betas of a named schedule.

    ``linear`` is latent-diffusion's (and the paper's) schedule, linear in sqrt(beta), also called
    ``scaled_linear`` (diffusers) and ``scaled_linear_beta`` (MONAI); ``plain_linear`` (MONAI:
    ``linear_beta``) is the original DDPM schedule, linear in beta.
    """
    if schedule in SQRT_LINEAR:
        return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
    if schedule in PLAIN_LINEAR:
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    raise ValueError(f"Unknown beta_schedule {schedule!r}; choose one of {BETA_SCHEDULES}.")


def shift_snr(alphas_cumprod: np.ndarray, snr_shift: float) -> np.ndarray:
    """The schedule whose signal-to-noise ratio a / (1 - a) is ``snr_shift`` times the given one at every t
    (log-SNR moved by log(snr_shift)): a' = s a / (1 + (s - 1) a). Scaling the data by b before noising
    (``b_scale``) multiplies the SNR by b^2 with the noise level unchanged; this moves the schedule instead."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return snr_shift * a / (1.0 + (snr_shift - 1.0) * a)


def eps_from_prediction(output: torch.Tensor, x_t: torch.Tensor, sqrt_a: torch.Tensor, sqrt_1m_a: torch.Tensor,
                        prediction: str) -> torch.Tensor:
    """The noise eps that a network's ``output`` at x_t stands for (``sqrt_a``, ``sqrt_1m_a``: sqrt(alpha_bar_t)
    and sqrt(1 - alpha_bar_t), broadcastable), as diffusers' and MONAI's schedulers convert:
    ``epsilon`` as it is; ``v_prediction`` (v = sqrt(a) eps - sqrt(1-a) x0): eps = sqrt(a) v + sqrt(1-a) x_t;
    ``sample`` (x0): eps = (x_t - sqrt(a) x0) / sqrt(1-a)."""
    prediction = PREDICTION_NAMES.get(prediction, prediction)
    if prediction == "epsilon":
        return output
    if prediction == "v_prediction":
        return sqrt_a * output + sqrt_1m_a * x_t
    if prediction == "sample":
        return (x_t - sqrt_a * output) / sqrt_1m_a
    raise ValueError(f"Unknown prediction type {prediction!r}; choose one of {PREDICTIONS}.")


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) matching ``like``'s rank, dtype and device."""
    values = values.to(device=like.device, dtype=like.dtype)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class DDPMSchedule:
    """Forward process q(x_t | x_0) and the training target.

    ``add_noise(x0, noise, t) = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * noise``
    (Ho et al. 2020, eq. 4).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        snr_shift: float = 1.0,
        prediction: str = "epsilon",
        noise=None,
    ):
        self.num_timesteps = int(num_timesteps)
        self.noise = noise  # None: Gaussian noise; else e.g. ddpm_ood.diffusion.noise.SimplexNoise
        self.prediction = PREDICTION_NAMES.get(prediction, prediction)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"Unknown prediction type {prediction!r}; choose one of {PREDICTIONS}.")
        betas = make_betas(beta_schedule, self.num_timesteps, beta_start, beta_end)
        if snr_shift == 1.0:
            self.betas = betas
            self.alphas = 1.0 - self.betas
            self._set_alphas_cumprod(np.cumprod(self.alphas))
        else:
            self._set_cumprod_and_steps(shift_snr(np.cumprod(1.0 - betas), snr_shift))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray) -> "DDPMSchedule":
        """A schedule given by its signal levels (e.g. a pretrained model's, as its own code computes them)."""
        schedule = cls.__new__(cls)
        schedule.num_timesteps = len(alphas_cumprod)
        schedule.prediction, schedule.noise = "epsilon", None
        schedule._set_cumprod_and_steps(alphas_cumprod)
        return schedule

    def _set_cumprod_and_steps(self, alphas_cumprod: np.ndarray) -> None:
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        self.alphas = ac / np.concatenate([[1.0], ac[:-1]])
        self.betas = 1.0 - self.alphas
        self._set_alphas_cumprod(ac)

    def _set_alphas_cumprod(self, alphas_cumprod: np.ndarray) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # Cached on the device of first use, so indexing by a device tensor of timesteps
        # needs no host round trip.
        self._device_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_tables:
            self._device_tables[device] = (
                torch.from_numpy(self.sqrt_alphas_cumprod).to(device),
                torch.from_numpy(self.sqrt_one_minus_alphas_cumprod).to(device),
            )
        return self._device_tables[device]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) with the given noise; ``timesteps`` has shape (N,)."""
        sqrt_ab, sqrt_1m_ab = self._tables(x0.device)
        timesteps = timesteps.to(x0.device).long()
        return _broadcast(sqrt_ab[timesteps], x0) * x0 + _broadcast(sqrt_1m_ab[timesteps], x0) * noise

    def sample_noise(self, shape, timesteps: torch.Tensor, generator: torch.Generator, device=None) -> torch.Tensor:
        """The noise this diffusion adds, of ``shape`` (N, C, *spatial), drawn from ``generator``: Gaussian,
        or the schedule's ``noise`` (simplex noise: image n's field at ``timesteps[n]``)."""
        if self.noise is None:
            return torch.randn(tuple(shape), generator=generator, device=device)
        return self.noise.sample(shape, timesteps, generator, device)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network learns to output at x_t (by ``prediction``): the noise, v = sqrt(a) eps -
        sqrt(1-a) x0 (diffusers' ``get_velocity``), or x0."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        sqrt_ab, sqrt_1m_ab = self._tables(x0.device)
        timesteps = timesteps.to(x0.device).long()
        return _broadcast(sqrt_ab[timesteps], x0) * noise - _broadcast(sqrt_1m_ab[timesteps], x0) * x0

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise a network's raw ``output`` at (x_t, t) stands for (:func:`eps_from_prediction`)."""
        if self.prediction == "epsilon":
            return output
        sqrt_ab, sqrt_1m_ab = self._tables(x_t.device)
        timesteps = timesteps.to(x_t.device).long()
        return eps_from_prediction(output, x_t, _broadcast(sqrt_ab[timesteps], x_t),
                                   _broadcast(sqrt_1m_ab[timesteps], x_t), self.prediction)

    def training_loss(
        self, model: ModelFn, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The "simple" L2 loss of Ho et al.: mean of (target - output(x_t, t))^2, the target being eps
        (the paper's), or v or x0 for a model trained to predict those."""
        x_t = self.add_noise(x0, noise, timesteps)
        output = model(x_t, timesteps)
        return torch.mean((output.float() - self.target(x0, noise, timesteps).float()) ** 2)


def plms_grid(num_inference_steps: int, num_timesteps: int = 1000, offset: int = 1) -> np.ndarray:
    """latent-diffusion's "uniform" grid, ascending: c = T // S; 0, c, 2c, ... plus ``offset`` (1, the paper's;
    0 is the grid of MONAI's and diffusers' PNDMScheduler, ddpm-ood's later code).

    >>> plms_grid(100)[:3].tolist(), plms_grid(100)[-1], plms_grid(100, offset=0)[-1]
    ([1, 11, 21], 991, 990)
    """
    if not 1 <= num_inference_steps <= num_timesteps:
        raise ValueError(
            f"num_inference_steps must be between 1 and {num_timesteps}, got {num_inference_steps}."
        )
    step = num_timesteps // num_inference_steps
    grid = np.arange(0, num_timesteps, step, dtype=np.int64) + offset
    # When S does not divide T the last point can land on T itself (S = 3: 1000): drop it.
    return grid[grid < num_timesteps]


# The start points: the paper's (grid[::skip] of latent-diffusion's grid, from t = 1) or ddpm-ood's later
# code's (reversed(PNDM timesteps)[1::skip], from t = c), by reconstruct.py's --start_points.
START_POINTS = ("paper", "ddpm-ood-head")


def ddpm_ood_head_start_points(num_inference_steps: int, skip_factor: int, num_timesteps: int = 1000) -> list[int]:
    """ddpm-ood's later start points: ``reversed(pndm.timesteps)[1::skip]`` of MONAI's PNDMScheduler (with
    ``skip_prk_steps``, its timesteps are the grid 0, c, 2c, ..., c = T // S, descending): c, c + skip c, ..."""
    grid = plms_grid(num_inference_steps, num_timesteps, offset=0)
    if not 1 <= skip_factor < len(grid):
        raise ValueError(f"inference_skip_factor must be between 1 and the number of grid points less one "
                         f"({len(grid) - 1}) for ddpm-ood's start points (they start at the second point), got "
                         f"{skip_factor}.")
    return [int(t) for t in grid[1::skip_factor]]


# Adams-Bashforth weights on (e_t, e_{t-1}, e_{t-2}, e_{t-3}), indexed by how many earlier
# model outputs the trajectory has (capped at 3). Row 0 is the first step, which instead uses
# the pseudo improved Euler average (e_t + e_next) / 2 (Liu et al. 2022, PNDM, eq. 12).
ADAMS_BASHFORTH = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [3 / 2, -1 / 2, 0.0, 0.0],
        [23 / 12, -16 / 12, 5 / 12, 0.0],
        [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    ],
    dtype=np.float64,
)


def adams_bashforth(eps: torch.Tensor, history: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """The multistep eps of PLMS (PNDM, Liu et al. 2022, eq. 12-13): w0 e_t + w1 e_{t-1} + w2 e_{t-2}
    + w3 e_{t-3}, with ``history`` the earlier raw model outputs, newest first.

    ``weights``: one row of ADAMS_BASHFORTH (4 numbers) for every row of ``eps``, or a (rows, 4)
    tensor giving each row its own (the fused loop, where trajectories are at different steps).
    The one implementation of the combination: the step of one trajectory and the fused loop
    both call it.
    """
    if isinstance(weights, torch.Tensor):
        columns = weights.reshape(*weights.shape, *([1] * (eps.dim() - 1))).unbind(1)  # 4 x (rows, 1, 1, 1)
    else:
        columns = weights
    combined = columns[0] * eps
    for weight, past in zip(columns[1:], history):
        combined = combined + weight * past
    return combined


class PLMSOutput(NamedTuple):
    prev_sample: torch.Tensor
    eps_history: list[torch.Tensor]  # newest first, at most 3 entries


class PLMSSampler:
    """PLMS (pseudo linear multistep) sampling, as in latent-diffusion's ``PLMSSampler``.

    The sampler holds only the schedule and the grid. The eps history of a trajectory is
    owned by the caller's loop and passed in and out of :meth:`step`, so two trajectories can
    never share one by accident (the bug in later upstream versions of this method).

    Typical loop for one trajectory starting at grid index ``k0``::

        sampler.set_timesteps(100)
        history = []
        for t in sampler.trajectory(k0):
            eps = model(x, t)
            x, history = sampler.step(eps, t, x, history, model)
    """

    def __init__(self, schedule: DDPMSchedule):
        self.schedule = schedule
        self.grid: np.ndarray | None = None
        self._tables: tuple[torch.Tensor, ...] = ()
        self._tables_key: tuple | None = None

    def set_timesteps(self, num_inference_steps: int, offset: int = 1) -> None:
        """The grid of ``num_inference_steps`` points, starting at ``offset`` (:func:`plms_grid`)."""
        self.grid = plms_grid(num_inference_steps, self.schedule.num_timesteps, offset)
        ac = self.schedule.alphas_cumprod
        # DDIM step at grid index k goes from alpha(grid[k]) to alpha(grid[k-1]) and, below
        # the first grid point, to alphas_cumprod[0] (not to 1), as latent-diffusion does.
        self.alphas = ac[self.grid]
        self.alphas_prev = np.concatenate([[ac[0]], ac[self.grid[:-1]]])
        self._index_of = {int(t): k for k, t in enumerate(self.grid)}
        self._tables_key = None

    @property
    def timesteps(self) -> np.ndarray:
        """The grid in sampling order (descending), as diffusers exposes it."""
        self._check_ready()
        return self.grid[::-1].copy()

    def _check_ready(self) -> None:
        if self.grid is None:
            raise RuntimeError("Call set_timesteps(num_inference_steps) before sampling.")

    def index_of(self, timestep: int) -> int:
        self._check_ready()
        try:
            return self._index_of[int(timestep)]
        except KeyError:
            raise ValueError(
                f"Timestep {timestep} is not on the PLMS grid {self.grid[:3].tolist()}...; "
                "start points must be grid points."
            ) from None

    def start_indices(self, skip_factor: int) -> np.ndarray:
        """Grid indices of the reconstruction start points: ``grid[::skip_factor]``."""
        self._check_ready()
        if not 1 <= skip_factor <= len(self.grid):
            raise ValueError(
                f"inference_skip_factor must be between 1 and the number of grid points "
                f"({len(self.grid)}), got {skip_factor}."
            )
        return np.arange(0, len(self.grid), skip_factor)

    def trajectory(self, start_index: int) -> list[int]:
        """Timesteps visited from grid index ``start_index`` down to the first grid point."""
        self._check_ready()
        return [int(t) for t in self.grid[start_index::-1]]

    def next_timestep(self, timestep: int) -> int:
        """The point the first-step predictor is evaluated at: the next lower grid point, or
        the timestep itself on the last step of a trajectory."""
        k = self.index_of(timestep)
        return int(self.grid[max(k - 1, 0)])

    def ddim_step(self, eps: torch.Tensor, grid_index: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) update from grid[k] to grid[k-1] (Song et al. 2021, eq. 12):

        x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
        x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps

        ``grid_index`` is an int, or a tensor of shape (N,) giving each sample its own index.
        """
        sqrt_a, sqrt_1m_a, sqrt_a_prev, sqrt_1m_a_prev = (
            _broadcast(table[grid_index].reshape(-1), sample) for table in self.device_tables(sample.device)
        )
        pred_x0 = (sample - sqrt_1m_a * eps) / sqrt_a
        return sqrt_a_prev * pred_x0 + sqrt_1m_a_prev * eps

    def device_tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """float64 tables over the grid on ``device``: sqrt(a), sqrt(1-a), sqrt(a_prev), sqrt(1-a_prev).

        Indexing a device table with a device tensor (or an int) needs no host synchronisation.
        """
        self._check_ready()
        key = (str(device), len(self.grid))
        if self._tables_key != key:
            self._tables = tuple(
                torch.from_numpy(np.ascontiguousarray(v)).to(device)
                for v in (
                    np.sqrt(self.alphas),
                    np.sqrt(1.0 - self.alphas),
                    np.sqrt(self.alphas_prev),
                    np.sqrt(1.0 - self.alphas_prev),
                )
            )
            self._tables_key = key
        return self._tables

    def first_step_eps(self, eps: torch.Tensor, grid_index: int, sample: torch.Tensor, model: ModelFn,
                       t_next: torch.Tensor) -> torch.Tensor:
        """The first step of a trajectory, pseudo improved Euler (PNDM eq. 12): take the DDIM step
        with ``eps``, evaluate the model at the result and ``t_next`` (the next grid point, or the
        timestep itself on a trajectory's last step), and average the two eps."""
        x_pred = self.ddim_step(eps, grid_index, sample)
        return (eps + model(x_pred, t_next)) / 2

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eps_history: Sequence[torch.Tensor],
        model: ModelFn | None = None,
    ) -> PLMSOutput:
        """One PLMS step from grid point ``timestep`` to the one below it.

        ``eps_history`` holds this trajectory's earlier raw model outputs, newest first. With an
        empty history this is the trajectory's first step, a pseudo improved Euler step that
        evaluates ``model`` once more at the predicted sample and the next grid point.
        Returns the new sample and the history to pass to the next step.
        """
        k = self.index_of(timestep)
        n_prev = min(len(eps_history), 3)
        if n_prev == 0:
            if model is None:
                raise ValueError("The first PLMS step of a trajectory needs `model` for its corrector.")
            t_next = torch.full((sample.shape[0],), self.next_timestep(timestep), device=sample.device)
            eps_prime = self.first_step_eps(model_output, k, sample, model, t_next)
        else:
            eps_prime = adams_bashforth(model_output, eps_history[:n_prev], ADAMS_BASHFORTH[n_prev])
        prev_sample = self.ddim_step(eps_prime, k, sample)
        return PLMSOutput(prev_sample, [model_output, *eps_history[:2]])
