"""PIL-LoRA: closed-form adapters for frozen pretrained models (seed §3).

An adapted ``nn.Linear`` computes ``y = base(x) + scaling · (σ(x̂ W_down) W_up + b)``: ``W_down`` is a fixed
seeded projection (regenerated from the config seed and the layer name, never stored; or, with ``down="rrr"``, chosen
from the data by reduced-rank ridge and stored), ``W_up`` and ``b`` are
solved by ridge regression from residual targets, in one streaming pass per layer group, earlier layers fitted and
active. The API follows peft: :class:`PILLoraConfig`, :func:`get_pil_model` -> :class:`PILModel`
(``save_pretrained``, ``from_pretrained``, ``merge_and_unload``, ``disable_adapters``). What each adapter regresses
onto is the choice of a fit function:

* :func:`fit_distill` — a teacher's layer outputs (another model, or the same model reading extra context:
  :func:`context_distillation_batches`);
* :func:`fit_task_residuals` — the output change the task loss asks for, pulled back to each layer in closed form;
* :class:`ClosedFormHead` / :func:`fit_head` — a ridge classifier on frozen features.
"""

from ._config import ALL_LINEAR, DEFAULT_LAM_GRID, PILLoraConfig
from ._distill import DistillBatch, context_distillation_batches, fit_distill
from ._fit import FitReport, LayerReport
from ._head import ClosedFormHead, fit_head
from ._layer import PILLoraLinear
from ._model import PILModel, get_pil_model
from ._task import fit_task_residuals

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_LAM_GRID",
    "ClosedFormHead",
    "DistillBatch",
    "FitReport",
    "LayerReport",
    "PILLoraConfig",
    "PILLoraLinear",
    "PILModel",
    "context_distillation_batches",
    "fit_distill",
    "fit_head",
    "fit_task_residuals",
    "get_pil_model",
]
