"""LaMBO-2: guided discrete diffusion for sequence design (Gruver et al. 2023, arXiv 2305.20009; spec section 7).

One `LaMBO2.step` works on the whole population at once, on the model's device, in five numbered steps (the
loop is written out in `step`, as a diffusers pipeline writes its `__call__`):

  1. choose edit positions by approximate occlusion saliency (softmax at `feature_attr_temp` over mutable,
     corruptible positions; `num_mutations_per_step` drawn without replacement; reused or resampled);
  2. corrupt them with the noise level of the corruption scheduler (default 1 / sqrt(1 + step)), with a
     mask (token ids) or gaussian (embeddings) process;
  3. guide: Adam on an additive offset of the trunk features at corrupted positions, minimising
     kl_weight * KL(guided || unguided) - (1 - kl_weight) * objective;
  4. sample tokens at corrupted positions from the MLM leaf (never an excluded token), after the unguided
     pass and after every guidance update;
  5. accept per candidate only if feasible and the blended score (1 - w) * objective + w * PLL does not decrease.

All randomness comes from a `torch.Generator` owned by the sampler whose state travels in the `DesignState`,
so `step(state)` is a pure function of the state and a resumed run equals an uninterrupted one. The sampler
never logs: every step returns its metrics and the new state.

Departures from the original (spec A18), each a fix:
  * the occlusion null embedding is the root's `embed(mask)` (what the token embeddings are compared with),
    not the raw, unnormalised mask row (`legacy_raw_null_embedding=True` restores it);
  * the pseudo-log-likelihood runs batched forwards over the (candidate, included position) occlusions
    instead of one forward per position (positions excluded for every candidate were skipped by the original
    too; here excluded pairs are skipped per candidate), and strings are never re-tokenised inside a step;
  * for a tree of finite receptive radius R (`NeuralTreeModel.receptive_radius`, e.g. a conv tree) each
    occlusion forwards only the 2R + 1 tokens around the masked position, and a proposal rescores only the
    positions within R of its edits, reusing its candidate's per-position terms elsewhere (`cortex.design.pll`;
    exact: the terms are the same functions of the same tokens);
  * the PLL is exact but never recomputed when its value is already known or cannot matter: the current
    candidates' PLL travels in the state from the step that accepted them (valid because every samplable
    token is corruptible, so the exclusion mask of an accepted candidate is the one its next step uses;
    otherwise it is recomputed); a proposal equal to its current candidate reuses that value; a proposal whose
    upper bound (1 - w) * objective (PLL <= 0) is below the reference cannot be accepted and is not scored.
    Acceptances and populations are those of the plain algorithm (tested);
  * the history's `score` is the blended score of the kept candidate (the original's buffer keeps the
    acceptance threshold, which is -inf after a rejected first step with exclude_initial_solution);
  * the decode reuses the guidance forward's logits (the original recomputes them: same values);
  * constraints are tensors checked on the device; feasibility is also enforced when sampling (tokens not
    allowed at a position are never proposed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cortex.corruption.processes import build_corruption
from cortex.data.tokenization import token_masks
from cortex.design.constraints import BoundConstraints, DesignConstraints, decode
from cortex.design.guidance import (
    InverseSqrtSchedule,
    LinearSchedule,
    approximate_occlusion,
    edit_position_probs,
    guidance_loss,
    normalize_saliency,
    positions_to_mask,
    reference_token_probs,
    sample_edit_positions,
)
from cortex.design.pll import pll_from_terms, rescore_positions
from cortex.design.pll import pll_terms as occlusion_pll_terms
from cortex.design.state import DesignState
from cortex.model.trunks import TrunkOutput

logger = logging.getLogger(__name__)

NOISE_SCHEDULES = {"inverse_sqrt": InverseSqrtSchedule, "linear": LinearSchedule}
CORRUPTIONS: tuple[str, ...] = ("mask", "gaussian")


@dataclass
class LaMBO2Config:
    """Sampler settings (defaults are the original's, spec 7.1, except where noted).

    num_mutations_per_step: edit positions per candidate per selection (None: every feasible position).
    max_guidance_updates: Adam steps on the trunk offset per step (0: unguided infilling).
    guidance_step_size: Adam learning rate. adam_betas / adam_eps: the original's (0.09, 0.0999), 1e-8.
    kl_weight: weight of KL(guided || unguided) in the guidance loss, in [0, 1].
    pll_weight: weight w of the pseudo-log-likelihood in the acceptance score (None: kl_weight, as the original).
    feature_attr_temp: softmax temperature of the edit-position probabilities.
    resample_edit_positions: draw new positions every step (False: draw at the first step, then reuse).
    exclude_initial_solution: at the first step, accept any feasible proposal (reference score -inf).
    corruption: "mask" (token ids) or "gaussian" (embeddings). gaussian_noise_variance: its variance.
    noise_schedule: "inverse_sqrt" (1 / sqrt(1 + step), the original) or "linear".
    root / mlm_leaf: the designed root and the MLM leaf predicting it (None: the only ones).
    pll_batch_size: occluded sequences (or windows) per forward when scoring pseudo-log-likelihoods (bounds
        memory; None: about 2^12 tokens per forward on CPU (quiet 2-core run, L = 237: 16-sequence forwards 0.75 s
        per PLL of 16, 138-sequence ones 0.96 s, 2048-sequence ones ~3x slower under load) and 2^18 on
        accelerators).
    pll_window: use the model's receptive radius (`NeuralTreeModel.receptive_radius`) for windowed and
        incremental PLL when it is finite (exact); False: full-length occlusions of every included position.
    legacy_raw_null_embedding: use the raw mask embedding row in occlusion (original behaviour, A18).
    seed: seed of the sampler's generator.
    """

    num_mutations_per_step: int | None = 2
    max_guidance_updates: int = 16
    guidance_step_size: float = 1.0
    kl_weight: float = 0.5
    pll_weight: float | None = None
    feature_attr_temp: float = 0.125
    resample_edit_positions: bool = False
    exclude_initial_solution: bool = False
    corruption: str = "mask"
    gaussian_noise_variance: float = 10.0
    noise_schedule: str = "inverse_sqrt"
    adam_betas: tuple[float, float] = (0.09, 0.0999)
    adam_eps: float = 1e-8
    root: str | None = None
    mlm_leaf: str | None = None
    pll_batch_size: int | None = None
    pll_window: bool = True
    legacy_raw_null_embedding: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        if self.num_mutations_per_step is not None and self.num_mutations_per_step < 1:
            raise ValueError(
                f"num_mutations_per_step is {self.num_mutations_per_step!r}; expected None or an int >= 1"
            )
        if self.max_guidance_updates < 0:
            raise ValueError(f"max_guidance_updates is {self.max_guidance_updates!r}; expected an int >= 0")
        for name in ("kl_weight", "pll_weight"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is {value!r}; expected a float in [0, 1]")
        if not self.feature_attr_temp > 0:
            raise ValueError(f"feature_attr_temp is {self.feature_attr_temp!r}; expected a float > 0")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption is {self.corruption!r}; expected one of {CORRUPTIONS}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"noise_schedule is {self.noise_schedule!r}; expected one of {sorted(NOISE_SCHEDULES)}"
            )
        if self.pll_batch_size is not None and self.pll_batch_size < 1:
            raise ValueError(f"pll_batch_size is {self.pll_batch_size!r}; expected an int >= 1")

    @property
    def acceptance_pll_weight(self) -> float:
        return self.kl_weight if self.pll_weight is None else self.pll_weight


@dataclass
class StepOutput:
    """What one step returns: the new state and the step's metrics (floats)."""

    state: DesignState
    metrics: dict[str, float] = field(default_factory=dict)


class TreeObjective(nn.Module):
    """Base of objectives computed by the tree: `leaves` names the leaves it reads; forward(leaf_outputs) ->
    (B,) scores to maximise, differentiable; `fit(leaf_outputs)` sets data-dependent constants (best value,
    reference point, scaling) from the seeds' predictions (default: nothing to fit)."""

    leaves: tuple[str, ...] = ()

    def fit(self, leaf_outputs: dict) -> None:
        return None


class LaMBO2(nn.Module):
    """LaMBO-2 sampler: `LaMBO2(model, objective, constraints, config)`, then `.run(seeds, num_steps)` or
    `state = .init_state(seeds)` and `.step(state)` repeatedly.

    model: a NeuralTreeModel (eager or compiled in place) with an MLM leaf on the designed root. objective: a
    `TreeObjective` (or any module with `leaves` and forward(leaf_outputs) -> (B,)). constraints:
    `DesignConstraints` (None: no constraints beyond the vocabulary).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: TreeObjective,
        constraints: DesignConstraints | None = None,
        config: LaMBO2Config | None = None,
    ):
        super().__init__()
        self.model = model
        self.objective = objective
        self.constraints = constraints or DesignConstraints()
        self.config = config or LaMBO2Config()
        cfg = self.config
        self.root = cfg.root or _only(list(model.roots), "root")
        if self.root not in model.roots:
            raise ValueError(
                f"LaMBO2 root {self.root!r} is not a root of the model; roots: {list(model.roots)}"
            )
        mlm_leaves = [
            name
            for name, leaf in model.config.leaves.items()
            if leaf["type"] == "mlm" and leaf["root"] == self.root
        ]
        self.mlm_leaf = cfg.mlm_leaf or _only(mlm_leaves, f"MLM leaf predicting root {self.root!r}")
        if self.mlm_leaf not in mlm_leaves:
            raise ValueError(
                f"mlm_leaf {self.mlm_leaf!r} is not an MLM leaf of root {self.root!r}; candidates: {mlm_leaves}"
            )
        missing = [leaf for leaf in objective.leaves if leaf not in model.leaves]
        if not objective.leaves or missing:
            raise ValueError(
                f"objective reads leaves {list(objective.leaves)} (missing {missing}); expected a non-empty list "
                f"of the model's leaves {list(model.leaves)}"
            )
        self.tokenizer = model.get_tokenizer(self.root)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer of root {self.root!r} has no mask token; LaMBO-2 needs one")
        self.mask_token_id = int(self.tokenizer.mask_token_id)
        corruptible, samplable = token_masks(self.tokenizer)
        vocab_size = model.roots[self.root].vocab_size
        self.register_buffer("corruptible_tokens", _pad_vocab(corruptible, vocab_size), persistent=False)
        self.register_buffer("samplable_tokens", _pad_vocab(samplable, vocab_size), persistent=False)
        kwargs = {"noise_variance": cfg.gaussian_noise_variance} if cfg.corruption == "gaussian" else {}
        self.corruption = build_corruption(cfg.corruption, self.tokenizer, **kwargs)
        self.noise_schedule = NOISE_SCHEDULES[cfg.noise_schedule]()
        self.guided_leaves = list(dict.fromkeys([self.mlm_leaf, *objective.leaves]))
        # A cached PLL stays valid across steps only if accepted tokens never change the exclusion mask.
        self.pll_cacheable = not bool((samplable & ~corruptible).any())
        # Finite radius: exact windowed / incremental PLL (cortex.design.pll); None: full-length occlusions.
        self.pll_radius = model.receptive_radius(self.root, self.mlm_leaf) if cfg.pll_window else None
        # Buffers and the corruption process live on the model's device (population tensors never leave it).
        self.corruptible_tokens = self.corruptible_tokens.to(self.device)
        self.samplable_tokens = self.samplable_tokens.to(self.device)
        self.corruption.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- set-up ----------------------------------------------------------------------------------------------

    def init_state(self, seeds: Sequence[str]) -> DesignState:
        """Tokenises the seeds once, fits the objective on their predictions and scores them."""
        if isinstance(seeds, str) or len(seeds) == 0:
            raise ValueError(f"seeds is {seeds!r}; expected a non-empty list of sequences")
        encoded = self.model.tokenize(list(seeds), root=self.root)
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        objective = self._fit_and_score(input_ids, attention_mask)
        terms = self.candidate_pll_terms(input_ids, attention_mask)
        pll = pll_from_terms(terms, self._excluded(input_ids, attention_mask))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed)
        state = DesignState(
            input_ids=input_ids,
            attention_mask=attention_mask,
            seed_ids=input_ids.clone(),
            objective=objective,
            edit_positions=torch.zeros_like(input_ids, dtype=torch.bool),
            num_accepted=torch.zeros(input_ids.shape[0], dtype=torch.long, device=self.device),
            generator_state=generator.get_state(),
            pll=pll,
            pll_terms=terms,
        )
        self._bind(state)
        score = self.blend_values(objective, pll, self.config.acceptance_pll_weight)
        state.history.extend(
            self._history_rows(state, objective, score, torch.zeros_like(state.num_accepted))
        )
        return state

    def resume(self, state: DesignState) -> DesignState:
        """Prepares a loaded state: moves it to the model's device and refits the objective on its seeds."""
        for name in (
            "input_ids",
            "attention_mask",
            "seed_ids",
            "objective",
            "edit_positions",
            "num_accepted",
        ):
            setattr(state, name, getattr(state, name).to(self.device))
        if state.pll is not None:
            state.pll = state.pll.to(self.device)
        if state.pll_terms is not None:
            state.pll_terms = state.pll_terms.to(self.device)
        self._fit_and_score(state.seed_ids, state.attention_mask)
        self._bind(state)
        return state

    def run(self, seeds: Sequence[str] | DesignState, num_steps: int) -> DesignState:
        """`num_steps` steps from seeds (strings) or from a saved state (resumed); returns the final state."""
        if num_steps < 0:
            raise ValueError(f"num_steps is {num_steps!r}; expected an int >= 0")
        state = self.resume(seeds) if isinstance(seeds, DesignState) else self.init_state(seeds)
        for _ in range(num_steps):
            state = self.step(state).state
        return state

    def _bind(self, state: DesignState) -> None:
        self.bound: BoundConstraints = self.constraints.bind(
            state.seed_ids, state.attention_mask, self.tokenizer
        )

    @torch.inference_mode()
    def _fit_and_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        leaf_outputs = self._forward_ids(input_ids, attention_mask, list(self.objective.leaves))
        self.objective.fit(leaf_outputs)
        return self.objective(leaf_outputs).detach()

    # ---- the step --------------------------------------------------------------------------------------------

    def step(self, state: DesignState) -> StepOutput:
        """One guided-diffusion step over the whole population; returns the new state and the metrics."""
        cfg = self.config
        generator = torch.Generator(device=self.device)
        generator.set_state(state.generator_state)
        input_ids, attention_mask = state.input_ids, state.attention_mask
        real = attention_mask.bool()
        is_corruptible = self.corruptible_tokens[input_ids] & real  # (N, L)
        pll_weight = cfg.acceptance_pll_weight
        self.model.eval()

        # 1. edit positions: approximate occlusion saliency -> softmax(. / T) -> draw without replacement.
        is_editable = is_corruptible & self.bound.editable_positions(input_ids)
        if cfg.num_mutations_per_step is None:
            edit_positions = is_editable
        elif state.step == 0 or cfg.resample_edit_positions:
            saliency = self.occlusion_saliency(input_ids, attention_mask, ~is_editable)
            probs = edit_position_probs(normalize_saliency(saliency), cfg.feature_attr_temp)
            edit_positions = self.draw_edit_positions(probs, is_editable, generator)
        else:
            edit_positions = state.edit_positions & is_editable

        # Reference score each proposal must reach: (1 - w) * objective + w * PLL of the current candidates
        # (their PLL and its per-position terms come from the state: computed when they were accepted).
        is_excluded = ~is_corruptible
        current_objective = state.objective
        current_pll, current_terms = state.pll, state.pll_terms
        if current_pll is None or current_terms is None or not self.pll_cacheable:
            current_terms = self.candidate_pll_terms(input_ids, attention_mask)
            current_pll = pll_from_terms(current_terms, is_excluded)
        current_score = self.blend_values(current_objective, current_pll, pll_weight)
        if state.step == 0 and cfg.exclude_initial_solution:
            reference = torch.full_like(current_score, float("-inf"))
        else:
            reference = current_score

        # 2. corrupt the edit positions with the scheduler's noise level.
        noise_level = self.noise_schedule(state.step) * torch.ones(
            input_ids.shape[0], dtype=torch.float64, device=self.device
        )
        root_inputs, is_corrupted = self.corrupt(
            input_ids, attention_mask, noise_level, edit_positions, generator
        )

        # 3-5. trunk latents of the corrupted inputs, then guidance updates with a sample after each.
        with torch.no_grad():
            _, trunk_output = self.model.forward_trunk({self.root: root_inputs})
        latents = trunk_output.last_hidden_state.detach()  # (N, L, D)
        offset = torch.zeros_like(latents, requires_grad=True)
        optimizer = torch.optim.Adam(
            [offset], lr=cfg.guidance_step_size, betas=cfg.adam_betas, eps=cfg.adam_eps
        )
        token_mask = self.samplable_tokens[None, None, :] & self.bound.sampling_mask[None, :, :]  # (1, L, V)
        candidates, candidate_objective, candidate_pll = input_ids, current_objective, current_pll
        candidate_terms = current_terms
        candidate_score, accepted_total = current_score, None
        reference_probs, guidance_terms = None, {}
        for update in range(cfg.max_guidance_updates + 1):
            needs_grad = update < cfg.max_guidance_updates
            with torch.set_grad_enabled(needs_grad):
                masked_offset = torch.where(is_corrupted[..., None], offset, torch.zeros_like(offset))
                guided = TrunkOutput(
                    last_hidden_state=latents + masked_offset, attention_mask=trunk_output.attention_mask
                )
                leaves = self.guided_leaves if needs_grad else [self.mlm_leaf]
                _, leaf_outputs = self.model.forward_heads(guided, leaves)
                token_logits = leaf_outputs[self.mlm_leaf].logits[0]  # (N, L, V), member 0 as the original
            if reference_probs is None:  # frozen at the unguided pass (offset 0)
                reference_probs = reference_token_probs(token_logits.detach(), self.samplable_tokens)

            # 4. sample tokens at corrupted positions (excluded tokens have probability 0).
            proposal = self.sample_tokens(
                token_logits.detach(), token_mask, candidates, is_corrupted, generator
            )
            # 5. accept per candidate if feasible and the blended score does not decrease.
            with torch.inference_mode():
                proposal_objective = self.objective(
                    self._forward_ids(proposal, attention_mask, list(self.objective.leaves))
                )
            score, proposal_pll, proposal_terms = self.proposal_scores(
                proposal,
                proposal_objective,
                candidates,
                candidate_terms,
                reference,
                attention_mask,
                is_excluded,
            )
            accepted = (score >= reference) & self.bound.is_feasible(proposal)
            candidates = torch.where(accepted[:, None], proposal, candidates)
            candidate_objective = torch.where(accepted, proposal_objective, candidate_objective)
            candidate_pll = torch.where(accepted, proposal_pll, candidate_pll)
            candidate_terms = torch.where(accepted[:, None], proposal_terms, candidate_terms)
            candidate_score = torch.where(accepted, score, candidate_score)
            reference = torch.where(accepted, score, reference)
            accepted_total = accepted.long() if accepted_total is None else accepted_total + accepted.long()

            if needs_grad:
                terms = guidance_loss(
                    token_logits, reference_probs, self.objective(leaf_outputs), is_corrupted, cfg.kl_weight
                )
                (grad,) = torch.autograd.grad(terms.loss, offset)  # leaves the model's .grad untouched
                offset.grad = grad
                optimizer.step()
                guidance_terms = {
                    "design_loss": terms.loss,
                    "kl": terms.kl,
                    "objective_loss": terms.objective_loss,
                    "token_entropy": terms.entropy,
                    "design_loss_grad_norm": grad.flatten(1).norm(dim=-1).mean(),
                }

        new_state = DesignState(
            input_ids=candidates,
            attention_mask=attention_mask,
            seed_ids=state.seed_ids,
            objective=candidate_objective,
            edit_positions=edit_positions,
            num_accepted=state.num_accepted + accepted_total,
            generator_state=generator.get_state(),
            step=state.step + 1,
            history=list(state.history),
            pll=candidate_pll,
            pll_terms=candidate_terms,
        )
        new_state.history.extend(
            self._history_rows(new_state, candidate_objective, candidate_score, accepted_total)
        )
        metrics = {
            "step": float(state.step),
            "noise_level": float(self.noise_schedule(state.step)),
            "accept_rate": accepted_total.float().mean() / (cfg.max_guidance_updates + 1),
            "objective_mean": candidate_objective.mean(),
            "objective_max": candidate_objective.max(),
            "score_mean": candidate_score.mean(),
            "num_corrupted": is_corrupted.sum(-1).float().mean(),
            **{name: value.detach() for name, value in guidance_terms.items()},
        }
        values = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device="cpu") for v in _to_cpu(metrics)]
        )
        return StepOutput(state=new_state, metrics=dict(zip(metrics, values.tolist())))

    # ---- step parts (pure given their inputs; usable on their own) -------------------------------------------

    def occlusion_saliency(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_excluded: torch.Tensor
    ) -> torch.Tensor:
        """(N, L) first-order estimate of the objective change when each position is masked; -inf where
        excluded (spec 8.1)."""
        root = self.model.roots[self.root]
        embeds = root.embed(input_ids).detach()  # (N, L, De)
        mask_id = torch.tensor([self.mask_token_id], device=input_ids.device)
        if self.config.legacy_raw_null_embedding:
            null_embedding = root.get_input_embeddings()(mask_id)[0].detach()
        else:
            null_embedding = root.embed(mask_id)[0].detach()  # (De,)

        with torch.enable_grad():
            embeds.requires_grad_(True)
            inputs = {self.root: {"inputs_embeds": embeds, "attention_mask": attention_mask}}
            leaf_outputs = self.model(root_inputs=inputs, leaves=list(self.objective.leaves)).leaf_outputs
            (grad,) = torch.autograd.grad(self.objective(leaf_outputs).sum(), embeds)
        return approximate_occlusion(grad, embeds.detach(), null_embedding, is_excluded)

    def draw_edit_positions(
        self, probs: torch.Tensor, is_editable: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """(N, L) position probabilities -> (N, L) bool mask of `num_mutations_per_step` positions per row,
        drawn without replacement. A row with fewer editable positions gets all of them: its other positions
        receive a negligible weight (1e-30) so the draw is well defined, then are masked out. With enough
        editable positions the draw equals the original's `torch.multinomial` on the same generator state."""
        usable = torch.isfinite(probs) & (probs > 0) & is_editable
        probs = torch.where(usable, probs, torch.full_like(probs, 1e-30))
        num_positions = min(self.config.num_mutations_per_step, probs.shape[-1])
        positions = sample_edit_positions(probs, num_positions, generator)
        return positions_to_mask(positions, probs.shape[-1]) & is_editable

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        noise_level: torch.Tensor,
        edit_positions: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Noises the edit positions -> (root inputs, is_corrupted (N, L) bool)."""
        if self.corruption.acts_on == "ids":
            noisy_ids, is_corrupted = self.corruption.add_noise(
                input_ids, noise_level, edit_positions, generator
            )
            return {"input_ids": noisy_ids, "attention_mask": attention_mask}, is_corrupted
        embeds = self.model.roots[self.root].embed(input_ids).detach()
        noisy, is_corrupted = self.corruption.add_noise(embeds, noise_level, edit_positions, generator)
        return {"inputs_embeds": noisy, "attention_mask": attention_mask}, is_corrupted

    def sample_tokens(
        self,
        token_logits: torch.Tensor,
        token_mask: torch.Tensor,
        input_ids: torch.Tensor,
        is_corrupted: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Draws a token at every position from softmax(logits) with excluded tokens at -inf (one multinomial
        over the flattened (N * L, V) probabilities, the original's Categorical draw) and keeps the draws at
        corrupted positions. token_logits (N, L, V); token_mask (1 or N, L, V) bool, True = may be sampled."""
        logits = token_logits.masked_fill(~token_mask, float("-inf"))
        probs = torch.softmax(logits, dim=-1).flatten(0, 1)  # (N * L, V)
        draws = torch.multinomial(probs, 1, replacement=True, generator=generator).view(input_ids.shape)
        return torch.where(is_corrupted, draws, input_ids)

    def blend(
        self,
        objective: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        is_excluded: torch.Tensor,
        pll_weight: float,
    ) -> torch.Tensor:
        """(1 - w) * objective + w * PLL (N,); the objective alone when w = 0 (no PLL forward then)."""
        if pll_weight == 0.0:
            return objective
        pll = self.pseudo_log_likelihood(input_ids, attention_mask, is_excluded)
        return self.blend_values(objective, pll, pll_weight)

    @staticmethod
    def blend_values(objective: torch.Tensor, pll: torch.Tensor, pll_weight: float) -> torch.Tensor:
        """(1 - w) * objective + w * pll, (N,); the objective alone when w = 0."""
        if pll_weight == 0.0:
            return objective
        return (1.0 - pll_weight) * objective + pll_weight * pll

    def candidate_pll(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N,) PLL of candidates over their corruptible positions (zeros when the acceptance ignores it)."""
        terms = self.candidate_pll_terms(input_ids, attention_mask)
        return pll_from_terms(terms, self._excluded(input_ids, attention_mask))

    def candidate_pll_terms(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) per-position PLL terms of candidates at their corruptible positions, 0 elsewhere (all zeros
        when the acceptance ignores the PLL)."""
        if self.config.acceptance_pll_weight == 0.0:
            return torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        return self.pll_terms(input_ids, attention_mask, ~self._excluded(input_ids, attention_mask))

    def _excluded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ~(self.corruptible_tokens[input_ids] & attention_mask.bool())

    def proposal_scores(
        self,
        proposal: torch.Tensor,
        proposal_objective: torch.Tensor,
        candidates: torch.Tensor,
        candidate_terms: torch.Tensor,
        reference: torch.Tensor,
        attention_mask: torch.Tensor,
        is_excluded: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Blended scores (N,), PLLs (N,) and per-position PLL terms (N, L) of proposals, exact wherever
        acceptance depends on them.

        candidate_terms (N, L): the candidates' terms under the same `is_excluded`. A proposal equal to its
        candidate reuses them. Since PLL <= 0, a proposal with (1 - w) * objective < reference cannot be accepted:
        it is not scored (score and PLL -inf, terms left at the candidate's). The remaining proposals rescore only the positions whose term can
        differ from the candidate's (`rescore_positions`: within the receptive radius of an edit, or the whole
        row for a global model), in one `pll_terms` call (one host sync to gather the pairs)."""
        weight = self.config.acceptance_pll_weight
        if weight == 0.0:
            zeros = torch.zeros_like(proposal_objective)
            return proposal_objective, zeros, torch.zeros_like(candidate_terms)
        edits = proposal != candidates  # (N, L)
        changed = edits.any(-1)  # (N,)
        scored = changed & ((1.0 - weight) * proposal_objective >= reference)
        rescore = rescore_positions(edits, self.pll_radius) & scored[:, None] & ~is_excluded
        terms = torch.where(
            rescore, self.pll_terms(proposal, attention_mask, rescore), candidate_terms
        )  # (N, L)
        pll = pll_from_terms(terms, is_excluded)
        pll = torch.where(changed & ~scored, torch.full_like(pll, float("-inf")), pll)
        return self.blend_values(proposal_objective, pll, weight), pll, terms

    def pseudo_log_likelihood(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_excluded: torch.Tensor
    ) -> torch.Tensor:
        """(N,) mean over non-excluded positions j of log p(x_j | x with x_j masked), averaged over the MLM
        leaf's members (spec 2.7). Only the (candidate, included position) pairs are occluded, in batched
        forwards of `pll_batch_size` sequences (the original runs one forward per position over all
        candidates), each a window of 2R + 1 tokens for a model of finite receptive radius R. 0 for a candidate
        with no included position."""
        return pll_from_terms(self.pll_terms(input_ids, attention_mask, ~is_excluded), is_excluded)

    def pll_terms(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """(N, L) log p(x_j | x with x_j masked) at `positions` (N, L) bool, 0 elsewhere (`cortex.design.pll`)."""
        length = input_ids.shape[1]
        width = length if self.pll_radius is None else min(2 * self.pll_radius + 1, length)
        batch_tokens = (
            self.config.pll_batch_size * width
            if self.config.pll_batch_size is not None
            else (2**12 if input_ids.device.type == "cpu" else 2**18)
        )
        return occlusion_pll_terms(
            self.model,
            self.root,
            self.mlm_leaf,
            input_ids,
            attention_mask,
            positions,
            self.mask_token_id,
            self.pll_radius,
            batch_tokens,
        )

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, leaves: list[str]) -> dict:
        inputs = {self.root: {"input_ids": input_ids, "attention_mask": attention_mask}}
        return self.model(root_inputs=inputs, leaves=leaves).leaf_outputs

    def _history_rows(
        self, state: DesignState, objective: torch.Tensor, score: torch.Tensor, accepted: torch.Tensor
    ) -> list[dict]:
        # The step's single host round trip: decode and copy the per-candidate numbers.
        sequences = decode(self.tokenizer, state.input_ids, state.attention_mask)
        distance = self.bound.edit_distance(state.input_ids).tolist()
        objective, score = objective.tolist(), score.tolist()
        accepted, total = accepted.tolist(), state.num_accepted.tolist()
        return [
            {
                "step": state.step,
                "candidate": index,
                "sequence": sequences[index],
                "objective": objective[index],
                "score": score[index],
                "accepted": accepted[index],
                "num_accepted": total[index],
                "edit_distance": distance[index],
            }
            for index in range(len(sequences))
        ]


def _to_cpu(metrics: dict) -> list[torch.Tensor]:
    return [torch.as_tensor(value).detach().to("cpu", torch.float64) for value in metrics.values()]


def _pad_vocab(mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    padded = torch.zeros(vocab_size, dtype=torch.bool)
    padded[: mask.shape[0]] = mask
    return padded


def _only(names: list[str], what: str) -> str:
    if len(names) != 1:
        raise ValueError(f"cannot choose the {what}: candidates are {names}; name one in LaMBO2Config")
    return names[0]


__all__ = ["CORRUPTIONS", "NOISE_SCHEDULES", "LaMBO2", "LaMBO2Config", "StepOutput", "TreeObjective"]
