"""Self-speculative decoding with a multi-token-prediction model (Gloeckle et al. 2024, section 3.2).

No second model: with ``k`` heads, one forward at the last accepted position gives head 1's next
token *and* heads 2..k's guesses for the tokens after it. The next forward feeds
``[next, d_2..d_k]`` and head 1 verifies the guesses at once; each row keeps the longest accepted
prefix plus head 1's token after it (correction, or bonus when all were accepted), and heads 2..k at
that position draft the next block. So every forward both verifies and drafts; ``k = 1`` is plain
decoding (one forward per token after the prefill).

This runs on the shared decode core (`scylla.decode.engine.decode`): `MTPTargetRunner` is the target
side (the model's fused heads, head 1's logits plus heads 2..k's states as features) and
`MTPProposer` turns the states at each row's last kept slot into the next step's chain, or into a
static tree whose depth-j children are head j+1's top-K_j tokens (Medusa-style: the same candidates
under every parent).

Verification is lossless: greedy keeps a guess iff it equals head 1's argmax; at temperature > 0 a
chain's guess ``d_j`` was sampled from head j's distribution ``q_j`` independently of head 1's token
and of the other guesses, so given all verification has seen before position j it is still
distributed as ``q_j``, and the rule of Leviathan et al. applies position by position (tree
candidates are deterministic and verified as point masses; `scylla.decode.verify`). Records share
the engine's `DecodeStats`:

- ``gamma = k - 1`` (guesses per step), ``drafted``: guesses offered (heads 2..k), ``accepted``: kept,
- ``accepted_per_position[j]`` / ``reached_per_position[j]``: head ``j + 2`` (chain acceptance),
- ``target_forwards``: model forwards including the prefill; ``draft_forwards = 0`` and
  ``draft_seconds`` ~ 0 (drafting has no forward of its own: its cost is inside ``verify_seconds``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from scylla.decode.engine import decode, is_int, validate_request
from scylla.decode.proposers import Proposer
from scylla.decode.stats import DecodeStats, SpeculativeOutput
from scylla.decode.target import FeatureSpec, TargetRunner
from scylla.decode.tree import TokenTree, TreeSpec
from scylla.decode.verify import Verdict, probs
from scylla.decode.vocab_ops import greedy_tokens, top_k_tokens
from scylla.measure.speedup import SpeedupMeasurement
from scylla.models.mtp import FusedHeads, MTPForCausalLM

__all__ = ["self_speculative_generate", "measure_self_speculative", "measure_self_speculative_ks",
           "SelfSpeculativeMeasurement", "MTPTargetRunner", "MTPProposer"]


@dataclass
class _HeadsOutput:
    logits: torch.Tensor  # head 1, [B, W, V]
    head_states: torch.Tensor  # heads 2..k, normalised, [k - 1, B, W, d]
    cache: Any


class _FusedHeadsForward:
    """An MTP model seen as a causal LM whose forward runs the k heads as one batched layer: what
    `scylla.decode.cache.CachedLM` calls. Head 1 is unembedded at every slot (verification needs it);
    heads 2..k only at the slot each row keeps (by `MTPProposer`)."""

    def __init__(self, model: MTPForCausalLM, k: int) -> None:
        self.model = model
        self.fused: FusedHeads = model.fused_heads(k)
        self.config = model.config

    def parameters(self) -> Any:
        return self.model.parameters()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                use_cache: bool = True, cache: Any = None) -> _HeadsOutput:
        h = self.model.fused_head_states(input_ids, attention_mask, position_ids, cache, self.fused)
        return _HeadsOutput(self.model.lm_head(h[0]), h[1:], cache)

    __call__ = forward


class MTPTargetRunner(TargetRunner):
    """The MTP model as its own target: head 1 verifies, heads 2..k's states are the features."""

    def __init__(self, model: MTPForCausalLM, k: int, batch: int, device: torch.device) -> None:
        super().__init__(_FusedHeadsForward(model, k), batch, device,
                         FeatureSpec(read=lambda out: out.head_states))  # type: ignore[arg-type]


class MTPProposer(Proposer):
    """Heads 2..k at each row's last kept slot guess the next step's tokens (see the module doc)."""

    name = "mtp_heads"
    self_drafting = True

    def __init__(self, model: MTPForCausalLM, spec: TreeSpec) -> None:
        super().__init__(spec)
        self.model = model
        self._parents = torch.tensor(spec.static_parents(), dtype=torch.long) if spec.kind == "static" else None

    def _guess(self, states: torch.Tensor, temperature: float, generator: torch.Generator | None) -> None:
        """Guesses of heads 2..k from their states [k - 1, B, d] at each row's last kept slot."""
        g, b = states.shape[0], states.shape[1]
        logits = self.model.lm_head(states.transpose(0, 1)).float()  # [B, k-1, V]
        if self.spec.kind == "static":
            self.candidates = [top_k_tokens(logits[:, j], kj)[1] for j, kj in enumerate(self.spec.branching)]
            return
        if temperature == 0:
            self.drafts, self.q = greedy_tokens(logits), None
            return
        self.q = probs(logits, temperature)
        self.drafts = torch.multinomial(self.q.reshape(b * g, -1), 1, generator=generator).view(b, g)

    def start(self, tokens: torch.Tensor, valid: torch.Tensor, target_features: torch.Tensor | None,
              temperature: float, generator: torch.Generator | None) -> None:
        self._sampling = (temperature, generator)
        self._guess(target_features[:, :, -1], temperature, generator)  # at the last prompt slot

    def propose(self, root: torch.Tensor, limit: torch.Tensor, contexts: Sequence[Sequence[int]],
                temperature: float, generator: torch.Generator | None) -> TokenTree | None:
        depth = min(self.spec.depth, int(limit.max()))
        if depth == 0:
            return None
        b, dev = root.shape[0], root.device
        if self.spec.kind == "static":
            spec = self.spec.truncated(depth)
            parents = self._parents[:spec.size].to(dev)
            node_depth = torch.zeros(spec.size, dtype=torch.long, device=dev)
            tokens = torch.zeros(b, spec.size, dtype=torch.long, device=dev)
            slot = 0
            for d, k in enumerate(spec.branching):  # every parent at depth d gets head d+2's top-k
                n_here = math.prod(spec.branching[:d + 1])
                tokens[:, slot:slot + n_here] = self.candidates[d].repeat(1, n_here // k)
                node_depth[slot:slot + n_here] = d + 1
                slot += n_here
            return TokenTree(tokens, parents.expand(b, -1).clone(), node_depth.expand(b, -1).clone(),
                             torch.ones(b, spec.size, dtype=torch.bool, device=dev))
        ar = torch.arange(depth, device=dev)
        q = self.q[:, :depth] if self.q is not None else None
        return TokenTree(self.drafts[:, :depth], ar.expand(b, depth).clone(), (ar + 1).expand(b, depth).clone(),
                         torch.ones(b, depth, dtype=torch.bool, device=dev), q)

    def accept(self, verdict: Verdict, tree: TokenTree | None, target_features: torch.Tensor | None) -> None:
        rows = torch.arange(verdict.path.shape[0], device=verdict.path.device)
        self._guess(target_features[:, rows, verdict.last_slot], *self._sampling)  # heads 2..k at the kept slot

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.spec.kind == "static":
            self.candidates = [c[rows] for c in self.candidates]
        else:
            self.drafts = self.drafts[rows]
            self.q = self.q[rows] if self.q is not None else None


def _check_model(model: Any, k: int) -> None:
    """Reject a model without heads or a bad k before any forward runs (the rest: `validate_request`)."""
    if not isinstance(model, MTPForCausalLM):
        raise TypeError(f"self-speculative decoding needs a scylla.models.mtp.MTPForCausalLM (a model with "
                        f"future-token heads), got {type(model).__name__}; for a separate draft model use "
                        "scylla.decode.engine.speculative_generate")
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (heads used; 1 = plain decoding), got {k!r}")
    if k > model.n_future:
        raise ValueError(f"k={k} exceeds the model's n_future={model.n_future} heads; use 1 <= k <= {model.n_future}")


@torch.inference_mode()
def self_speculative_generate(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    tree: str | TreeSpec | None = None,
) -> SpeculativeOutput:
    """Generate continuations with the model drafting for itself through heads 2..k.

    Args:
        model: an `MTPForCausalLM` (its head 1 defines the output distribution).
        prompts: token-id lists, lengths may differ.
        k: heads used, ``1 <= k <= model.n_future``; ``k = 1`` is plain decoding.
        max_new_tokens: per-row cap on generated tokens (EOS included when it stops a row).
        temperature: 0 is greedy verification, > 0 lossless rejection sampling.
        batch_size: rows decoded together (``None``: all prompts at once).
        eos_token_id: a row stops after emitting it.
        seed: seeds the sampler (temperature > 0); ``None`` means seed 0, so runs are reproducible.
        tree: ``None`` drafts the chain of heads 2..k; ``"static:K2xK3.."`` (at most k - 1 depths) a tree
            of each head's top-K candidates.

    Returns:
        ``.sequences`` (generated ids per prompt, input order) and ``.stats`` (`DecodeStats`, gamma=k-1).
    """
    _check_model(model, k)
    k = int(k)
    spec = TreeSpec.chain(k - 1) if tree is None else TreeSpec.parse(tree)
    if spec.kind == "dynamic" or spec.depth > k - 1:
        raise ValueError(f"MTP drafts a chain or a static tree of at most k - 1 = {k - 1} depths (one head each), "
                         f"got {spec.describe()}")
    validate_request(model, None, prompts, spec, max_new_tokens, temperature, batch_size, eos_token_id)
    proposer = MTPProposer(model, spec) if spec.depth else None
    return decode(lambda n, device: MTPTargetRunner(model, k, n, device), proposer, prompts, spec=spec,
                  max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                  batch_size=None if batch_size is None else int(batch_size), eos_token_id=eos_token_id,
                  seed=seed, device=next(model.parameters()).device)



@dataclass
class SelfSpeculativeMeasurement(SpeedupMeasurement):
    """Self-speculative (k heads) vs plain decoding (k = 1) of the same MTP model, same batch size.

    Same ``to_dict`` keys as `SpeedupMeasurement` plus ``k``, ``n_future`` and ``draft_family``.
    There is no separate draft step: ``draft_step_seconds = 0`` and ``c = 0`` exactly, and the heads'
    cost is inside ``verify_step_seconds`` (one forward on k tokens running k heads), so the cost model
    ``S(B) = tau * T_t(B, 1) / (T_t(B, gamma + 1) + gamma * T_d)`` applies with ``T_d = 0``.
    """

    k: int = 1
    n_future: int = 1

    @property
    def draft_step_seconds(self) -> float:
        return 0.0

    @property
    def c(self) -> float:
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "k": self.k, "n_future": self.n_future, "draft_family": "mtp"}


def measure_self_speculative(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    k: int,
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> SelfSpeculativeMeasurement:
    """Decode ``prompts`` with k heads and with k = 1 at ``batch_size``; report speedup (wall clock).

    The baseline is the same model's plain decoding through the same loop (k = 1 runs the trunk and
    head 1 only). Repeats are interleaved (plain, k heads, plain, ...) and summarised by the median
    tokens/s and step times, so drifting machine load hits both sides alike; counters come from the
    last repeat.
    """
    return measure_self_speculative_ks(model, prompts, ks=[k], batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       temperature=temperature, eos_token_id=eos_token_id, seed=seed,
                                       repeats=repeats, warmup=warmup)[0]


def measure_self_speculative_ks(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    ks: Sequence[int],
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> list[SelfSpeculativeMeasurement]:
    """`measure_self_speculative` for several head counts at once: one measurement per k in ``ks``.

    Every k shares one plain (k = 1) baseline: each repeat decodes plainly, then with every k in turn
    (interleaved, so drifting load hits all of them alike), and each k's speedup is the median of its
    tokens/s over the median plain tokens/s. This is how a pipeline job with a ``k``-head model reports
    tokens per forward against k' = 2..k without measuring the baseline k - 1 times.
    """
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must list at least one head count")
    for k in ks:
        _check_model(model, k)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                  eos_token_id=eos_token_id, seed=seed)
    if warmup:
        few = list(prompts[: min(len(prompts), batch_size)])
        short = {**kwargs, "max_new_tokens": min(8, max_new_tokens)}
        self_speculative_generate(model, few, k=1, **short)
        for k in ks:
            self_speculative_generate(model, few, k=k, **short)
    base_runs: list[DecodeStats] = []
    spec_runs: dict[int, list[DecodeStats]] = {k: [] for k in ks}
    for _ in range(repeats):
        base_runs.append(self_speculative_generate(model, prompts, k=1, **kwargs).stats)
        for k in ks:
            spec_runs[k].append(self_speculative_generate(model, prompts, k=k, **kwargs).stats)
    base_tps = statistics.median(b.tokens_per_second for b in base_runs)
    return [SelfSpeculativeMeasurement(
        gamma=k - 1, batch_size=batch_size, speculative=spec_runs[k][-1], baseline=base_runs[-1],
        speculative_tps=statistics.median(s.tokens_per_second for s in spec_runs[k]), baseline_tps=base_tps,
        speculative_runs=spec_runs[k], baseline_runs=base_runs, k=k, n_future=model.n_future,
    ) for k in ks]
