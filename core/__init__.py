"""Domain-agnostic core: schedules, parameterizations, losses, spaces, samplers, trainer."""

from .domain import Batch, DataError, Domain, DomainDataset
from .parameterization import (EDMParam, EpsParam, FlowParam, Prediction, Scalings, VParam, X0Param,
                               make_parameterization)
from .registry import available_domains, get_domain, register_domain
from .samplers import (SAMPLERS, SPACINGS, ddim, ddim_invert, ddpm, external_denoiser, get_sampler, prior_sample,
                       time_grid)
from .schedule import (CosineSchedule, FlowSchedule, LinearBetaSchedule, PolynomialSchedule, Schedule,
                       SigmaSchedule, TableSchedule, make_schedule)
from .space import DenseSpace, Space, per_sample_generators
from .graph import GraphSpace
from .denoiser import Denoiser
from .loss import DiffusionLoss
from .condition import Condition, ConditionKind, LabelKind, TokensKind, VectorKind
from .guidance import Guidance, classifier_free_guidance, classifier_guidance
from . import solvers  # registers the continuous samplers
from .solvers import jump_logsnr_grid, unipc
