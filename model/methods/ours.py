"""ours: the adaptive sparse-coding EBM (Alg. 2). Adapting builds the task dictionary from the shots;
scoring is the image energy and its anomaly map."""
from __future__ import annotations

import torch

from model.augment import DIHEDRAL_SIZE, dihedral
from model.ebm.energy import AdaptiveEBM
from model.errors import InputError
from model.methods.base import SHARED_CANDIDATES, Method, ScoringOptions
from model.ebm.sparse import TaskDictionary


class OursScorer:
    """The adaptive EBM: state = the task dictionary built from the shots."""

    def __init__(self, model: AdaptiveEBM, smooth_sigma: float = 0.0, augment_support: bool = False,
                 map_mode: str = "gradient"):
        self.model, self.smooth_sigma, self.augment_support = model, smooth_sigma, augment_support
        self.map_mode = map_mode

    def adapt(self, support: torch.Tensor) -> TaskDictionary:
        return self.adapt_as(support, support.shape[0])

    def adapt_as(self, support: torch.Tensor, task_shots: int,
                 features: torch.Tensor | None = None) -> TaskDictionary:
        """Adapt to `support` as to a task of `task_shots` shots (a calibration's leave-one-out subset: its
        scores must be in the units of the task's test scores). features: `features(support)`, if known."""
        with torch.no_grad():
            if self.augment_support:
                # the leave-one-out normal energies are per shot: not computed over dihedral copies of one shot
                return self.model.build_dictionary(torch.cat([dihedral(support, t) for t in range(DIHEDRAL_SIZE)]))
            return self.model.build_dictionary(support, task_shots, features)

    def standardises(self, task_shots: int) -> bool:
        """Whether adapting to a task of task_shots shots builds normal energies into the dictionary."""
        return not self.augment_support and self.model.standardises(task_shots)

    def features(self, images: torch.Tensor) -> torch.Tensor | None:
        """What score() computes from the images alone, Ψ(images) (B, d, h', w'), for a caller that scores one
        test set under several support draws; None where the shots change it (exposure alignment) or the map
        differentiates through Ψ (map mode "gradient")."""
        if self.map_mode != "energy" or self.model.sparse.exposure != "none":
            return None
        with torch.no_grad():
            return self.model.backbone(images)

    def unit_volume_field(self) -> int | None:
        """The receptive field of the unit volumes scored, when D's atoms are the shots' volumes as they are
        (no dihedral copies) and the energy map needs no gradient (`AdaptiveEBM.unit_volume_field`); else None."""
        if self.augment_support or self.map_mode != "energy":
            return None
        return self.model.unit_volume_field()

    def score_and_atoms(self, images: torch.Tensor, dictionary: TaskDictionary,
                        features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`score`, and every position's SHARED_CANDIDATES most similar atoms (B, h'·w', c), columns of D
        (= rows of kNN's memory bank for these shots); needs `unit_volume_field`."""
        if self.unit_volume_field() is None:
            raise InputError("score_and_atoms needs the energy map over the shots' own unit volumes "
                             "(model.anomaly_map=energy, eval.augment_support=false, FISTA over top-k atoms)")
        with torch.no_grad():
            position, columns = self.model.position_energy(images, dictionary, features,
                                                           return_atoms=SHARED_CANDIDATES)  # (B, h', w'), (B, h'w', c)
            scores, maps = self.model.energy_map(position, dictionary, tuple(images.shape[-2:]), self.smooth_sigma)
        return scores, maps, columns

    def score(self, images: torch.Tensor, dictionary: TaskDictionary,
              features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.score_and_map(images, dictionary, self.smooth_sigma, self.map_mode, features)


def build(network: AdaptiveEBM, options: ScoringOptions) -> OursScorer:
    return OursScorer(network, options.smooth_sigma, options.augment_support, options.anomaly_map)


METHOD = Method(name="ours", label="ours", model="ours", model_use="needs a model trained with method ours",
                baseline=False, untrained=False, build=build)
