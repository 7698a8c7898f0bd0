"""What the generated ``model.py``'s Router specialises on: the routing choices of the plan's MoE, each checked (for
:mod:`moec.codegen.features`)."""

from __future__ import annotations

from dataclasses import dataclass

from moec.codegen.checks import checked_bool, checked_choice, float_text
from moec.spec.plan import MoEPlan
from moec.vocab import (
    BALANCE_GRANULARITIES,
    DROP_POLICIES,
    GROUP_SCORES,
    ROUTER_APPLY_TO,
    ROUTER_KINDS,
    ROUTER_SCORES,
    SELECTION_BIAS_ON,
)


@dataclass(frozen=True)
class RouterFeatures:
    kind: str  # moe.router.kind: topk, or an algorithm of docs/routing.md
    score: str
    softmax_after_topk: bool
    normalize: bool
    normalize_eps: str | None  # the spec's epsilon on the renormalised sum, printed; None: the default of router.j2
    scale: bool
    bias: bool
    selection_bias: bool
    selection_bias_parameter: bool
    groups: bool
    group_score: str
    dense: bool
    jitter: bool
    capacity: bool
    drop_policy: str
    load_balance: bool
    sequence: bool  # load balance per sequence
    z_loss: bool
    bias_update: bool
    mlp: bool  # a router MLP: logits = W_out·gelu(W_in·x)
    capacity_groups: bool  # capacity per local group of tokens (GShard)
    logit_softcap: bool = False  # logits capped at cap·tanh(logits/cap) before the score (Laguna)
    select_on_logits: bool = False  # experts chosen by logits + selection bias, not scores + it (Kolibri)
    gate_input: bool = False  # router.apply_to input: each expert reads its gate times the token (Llama-4)
    # an encoder-decoder's experts take at most encoder.expert_capacity tokens of each sequence (Switch): its router
    # is told the sequences' length, as a per-sequence balance loss's is (moec.codegen.encdec)
    sequence_capacity: bool = False

    @property
    def takes_seq_len(self) -> bool:
        """The MoE hands its router the length of the sequences its tokens come from."""
        return self.sequence or self.sequence_capacity

    @property
    def learned(self) -> bool:
        """The router has weights (hash routing has none)."""
        return self.kind != "hash"

    @property
    def empty_slots(self) -> bool:
        """Slots can hold no expert before any capacity drop (GShard's unsent second choices, expert choice's untaken
        tokens): -1 in ``idx``."""
        return self.kind in ("expert_choice", "gshard")

    @property
    def chooses_top_k(self) -> bool:
        """Experts are chosen by the top-k of the scores (the Router has ``select``)."""
        return self.kind == "topk" and not self.dense

    @property
    def summary(self) -> str:
        """One docstring line naming this model's routing (fixed words only)."""
        parts = [f"{self.score.replace('_', '-')} scores" + (" of a router MLP" if self.mlp else "")]
        if self.kind == "hash":
            parts = ["a hash of each token's id (no learned router), each chosen expert weighted 1/k"]
        elif self.kind == "gshard":
            parts.append("GShard top-2 (in training the second expert is sent with probability 2·g2)")
        elif self.kind == "sparsemixer":
            parts.append("Phi-3.5-MoE's SparseMixer top-2 (each weight a softmax over the logits near its expert's)")
        elif self.kind == "expert_choice":
            parts.append("expert choice (each expert takes its top ceil(k·T/E) tokens of the call)")
        elif self.dense:
            parts.append("dense (every expert, weighted by its score)")
        else:
            if self.logit_softcap:
                parts.append("soft-capped logits")
            if self.selection_bias:
                parts.append("a selection bias" + (" on the logits" if self.select_on_logits else ""))
            if self.groups:
                parts.append(f"group-limited choice ({self.group_score})")
            parts.append("top-k, softmax over the k chosen logits" if self.softmax_after_topk else "top-k")
        if self.normalize:
            parts.append("weights renormalized")
        if self.scale:
            parts.append("scaled")
        if self.capacity:
            parts.append(f"capacity-limited (drop by {self.drop_policy})")
        if self.capacity_groups:
            parts.append("per local group of tokens")
        return "This model routes with " + ", ".join(parts) + "."


def router_features(moe: MoEPlan) -> RouterFeatures:
    r = moe.router
    load_balance = moe.load_balance_coeff > 0
    return RouterFeatures(
        kind=checked_choice(r.kind, ROUTER_KINDS, "router.kind"),
        score=checked_choice(r.score, ROUTER_SCORES, "router.score"),
        softmax_after_topk=checked_bool(r.softmax_after_topk, "router.softmax_after_topk"),
        normalize=checked_bool(r.normalize_topk, "router.normalize_topk"),
        normalize_eps=None if r.normalize_eps is None else float_text(r.normalize_eps, "router.normalize_eps"),
        scale=r.scale != 1.0,
        bias=checked_bool(r.bias, "router.bias"),
        selection_bias=checked_bool(r.selection_bias, "router.selection_bias"),
        selection_bias_parameter=bool(r.selection_bias)
        and checked_bool(r.selection_bias_parameter, "router.selection_bias_parameter"),
        groups=r.n_groups is not None and r.topk_groups is not None and r.topk_groups < r.n_groups,
        group_score=checked_choice(r.group_score, GROUP_SCORES, "router.group_score"),
        dense=checked_bool(r.dense, "router.dense"),
        jitter=r.jitter > 0,
        capacity=moe.capacity_factor is not None,
        drop_policy=checked_choice(moe.drop_policy, DROP_POLICIES, "drop_policy"),
        load_balance=load_balance,
        # the balance loss is reported (MoEAux) even when its coefficient is 0, so its granularity always counts
        sequence=checked_choice(moe.load_balance_granularity, BALANCE_GRANULARITIES, "load_balance_granularity")
        == "sequence",
        z_loss=moe.z_loss_coeff > 0,
        # the update moves the selection bias; without one it has nothing to move (as in moec.nn)
        bias_update=moe.bias_update_rate is not None and bool(r.selection_bias),
        mlp=r.mlp_hidden is not None,
        capacity_groups=moe.capacity_factor is not None and moe.capacity_group_size is not None,
        logit_softcap=r.logit_softcap is not None,
        gate_input=checked_choice(r.apply_to, ROUTER_APPLY_TO, "router.apply_to") == "input",
        select_on_logits=checked_choice(r.selection_bias_on, SELECTION_BIAS_ON, "router.selection_bias_on") == "logits",
    )
