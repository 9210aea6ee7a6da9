"""The episode loss of Alg. 1 (lines 7-9, Eqs. 10-12) as pure functions of θ, one episode and a spec.

What every trainer differentiates: the in-process run applies it through the learner's own model, a
Langevin worker (workers/langevin_worker.py) on its private copy, and the learner re-evaluates L_cd from a
worker's negatives with `episode_losses` (detach_rec). One composition, so the updates agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from model.errors import InputError
from model.ebm.energy import AdaptiveEBM, participation_ratio
from model.ebm.langevin import langevin, validate_langevin
from model.losses import contrastive_divergence, energy_regularizer, reconstruction_loss, total_loss
from model.ebm.sparse import TaskDictionary


class EpisodeTensors(Protocol):
    """What the loss reads from an episode (workers.episodes.Episode has these)."""

    support: torch.Tensor  # (K, C, S, S)
    queries: torch.Tensor  # (M, C, S, S)
    corrupted: torch.Tensor  # (M, C, S, S)
    anomalous: torch.Tensor | None  # (A, C, S, S) real defects of the episode's category (objective "defects")
    anomalous_masks: torch.Tensor | None  # (A, S, S) bool, where the defects are


OBJECTIVES = ("cd", "defects")  # train.objective: Alg. 1's contrastive divergence, or real training defects
DEFECT_COVERAGE = 0.3  # a feature cell counts as a defect cell when its mask covers more than this fraction


def validate_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InputError(f"train.objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class StepSpec:
    """The loss and Langevin settings of one episode (plain values: model/ and workers/ import no orchestrator)."""

    steps: int  # J
    step_size: float  # β
    noise_scale: float
    eta_rec: float = 1.0  # η₀
    eta_cd: float = 1.0  # η₁
    reg_weight: float = 0.0
    detach_rec: bool = False  # True: workers ship negatives, the learner computes L_cd
    rank_weight: float = 0.0  # weight of −log(participation ratio of the support atoms): keeps Ψ from collapsing
    objective: str = "cd"  # one of OBJECTIVES

    def __post_init__(self) -> None:
        validate_langevin(self.steps, self.step_size, self.noise_scale)
        validate_objective(self.objective)


@dataclass
class EpisodeLoss:
    loss: torch.Tensor  # () differentiable w.r.t. θ
    stats: dict[str, float]


def sample_negatives(
    model: AdaptiveEBM,
    dictionary: TaskDictionary,
    corrupted: torch.Tensor,
    spec: StepSpec,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """LD(q̂): J Langevin steps from the corrupted queries (M, C, H, W) -> negatives (M, C, H, W).

    With detach_rec=False the chain stays differentiable w.r.t. θ (create_graph)."""
    return langevin(
        lambda x: model.energy(x, dictionary),
        corrupted,
        spec.steps,
        spec.step_size,
        spec.noise_scale,
        generator=generator,
        create_graph=not spec.detach_rec,
    )


def with_rank_term(loss: torch.Tensor, dictionary: TaskDictionary, spec: StepSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """loss − rank_weight·log(participation ratio of the support atoms), and that ratio (for the log).

    Effective rank of the support features (the atoms, (m, A) -> rows (A, m)); meta-training that lowers
    it collapses Ψ onto a few directions, and every category then looks alike to the dictionary."""
    support_rank = participation_ratio(dictionary.atoms.transpose(0, 1))
    if spec.rank_weight:
        loss = loss - spec.rank_weight * support_rank.log()
    return loss, support_rank


def episode_losses(
    model: AdaptiveEBM,
    dictionary: TaskDictionary,
    queries: torch.Tensor,
    corrupted: torch.Tensor,
    negatives: torch.Tensor,
    spec: StepSpec,
    patch_mask: torch.Tensor | None = None,
) -> EpisodeLoss:
    """Eqs. 10-12 from the negatives: L = η₀·MSE(LD(q̂), q) + η₁·(E(q) − E(sg[LD(q̂)])) (+ reg).

    patch_mask (M, S, S) bool, where the corruption is: the stats then also say whether the chain restored
    those pixels (`inpaint_gain_patch`). The whole-image `inpaint_gain` mixes that with the Langevin noise
    every untouched pixel receives (J·s²·β of MSE: 7.5e-4 at the defaults, more than the patch's share)."""
    pos_energy = model.energy(queries, dictionary)  # (M,)
    # Contrastive divergence treats negatives as samples: no gradient through the chain (Eq. 3).
    neg_energy = model.energy(negatives.detach(), dictionary)  # (M,)
    l_cd = contrastive_divergence(pos_energy, neg_energy)
    l_rec = reconstruction_loss(negatives, queries)
    reg = energy_regularizer(pos_energy, neg_energy)
    loss = total_loss(l_rec, l_cd, spec.eta_rec, spec.eta_cd, reg, spec.reg_weight)
    loss, support_rank = with_rank_term(loss, dictionary, spec)
    start_rec = reconstruction_loss(corrupted, queries)
    with torch.no_grad():  # the chain should lower the corrupted query's energy (inpainting): > 0 is good
        chain_energy_drop = model.energy(corrupted, dictionary.detach()) - neg_energy.detach()  # (M,)
    stats = {
        "loss": float(loss.detach()),
        "l_rec": float(l_rec.detach()),
        "l_cd": float(l_cd.detach()),
        "reg": float(reg.detach()),
        "pos_energy": float(pos_energy.detach().mean()),
        "neg_energy": float(neg_energy.detach().mean()),
        "inpaint_gain": float(start_rec - l_rec.detach()),  # > 0: Langevin moved towards the query
        "chain_energy_drop": float(chain_energy_drop.mean()),
        "support_rank": float(support_rank.detach()),
    }
    if patch_mask is not None and bool(patch_mask.any()):
        inside = patch_mask[:, None].expand_as(queries)  # (M, C, S, S): the corrupted pixels, every channel
        with torch.no_grad():  # > 0: the chain moved the corrupted pixels towards the query's (inpainting)
            stats["inpaint_gain_patch"] = float((corrupted - queries)[inside].pow(2).mean()
                                                - (negatives.detach() - queries)[inside].pow(2).mean())
    return EpisodeLoss(loss, stats)


def cell_coverage(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fraction of each feature cell under the mask: masks (A, S, S) bool -> (A, h', w') in [0, 1]."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0]  # (A, h', w')


def defect_losses(
    model: AdaptiveEBM, dictionary: TaskDictionary, queries: torch.Tensor, anomalous: torch.Tensor,
    masks: torch.Tensor, spec: StepSpec,
) -> EpisodeLoss:
    """Objective "defects": mean position energy of normal cells minus that of defect cells, − rank term.

    Normal cells: every cell of the normal queries and the cells of the anomalous images that the mask does
    not touch; defect cells: those more than DEFECT_COVERAGE under the mask. The defects are real ones of
    the episode's training category (its labelled test images), never of a target or validation category.
    """
    normal_energy = model.position_energy(queries, dictionary)  # (M, h', w')
    defect_energy = model.position_energy(anomalous, dictionary)  # (A, h', w')
    coverage = cell_coverage(masks, tuple(defect_energy.shape[-2:]))  # (A, h', w')
    normal_cells = torch.cat([normal_energy.flatten(), defect_energy[coverage == 0]])  # (n,)
    defect_cells = defect_energy[coverage > DEFECT_COVERAGE]  # (a,)
    if defect_cells.numel() == 0:  # defects smaller than a cell: their most covered cells stand in
        defect_cells = defect_energy.flatten(1).gather(1, coverage.flatten(1).argmax(1, keepdim=True)).flatten()
    loss, support_rank = with_rank_term(normal_cells.mean() - defect_cells.mean(), dictionary, spec)
    stats = {
        "loss": float(loss.detach()),
        "normal_cell_energy": float(normal_cells.detach().mean()),
        "defect_cell_energy": float(defect_cells.detach().mean()),
        "pos_energy": float(normal_energy.detach().mean()),
        "support_rank": float(support_rank.detach()),
    }
    return EpisodeLoss(loss, stats)


def episode_loss(
    model: AdaptiveEBM, episode: EpisodeTensors, spec: StepSpec, generator: torch.Generator | None, device: torch.device
) -> EpisodeLoss:
    """One episode's loss: Alg. 1 lines 7-9 (dictionary, Langevin negatives, L = η₀L_rec + η₁L_cd), or with
    spec.objective "defects" the cell-energy margin on the episode's real defects."""
    if spec.objective == "defects":
        if episode.anomalous is None or episode.anomalous_masks is None:
            raise InputError("train.objective=defects: the episode carries no anomalous images")
        dictionary = model.build_dictionary(episode.support.to(device))
        return defect_losses(model, dictionary, episode.queries.to(device), episode.anomalous.to(device),
                             episode.anomalous_masks.to(device), spec)
    support = episode.support.to(device)  # (K, C, S, S)
    queries = episode.queries.to(device)  # (M, C, S, S)
    corrupted = episode.corrupted.to(device)  # (M, C, S, S)
    dictionary = model.build_dictionary(support)  # gradient flows into θ through D too
    negatives = sample_negatives(model, dictionary, corrupted, spec, generator)  # (M, C, S, S)
    mask = getattr(episode, "patch_mask", None)
    return episode_losses(model, dictionary, queries, corrupted, negatives, spec,
                          None if mask is None else mask.to(device))
