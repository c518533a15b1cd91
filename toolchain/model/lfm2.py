"""An export-ready LFM2 / LFM2.5 decoder, written for ``torch.export`` and ExecuTorch.

Shapes (batch is always 1 on a board):

    tokens         int64 [1, T]      T in [1, max_seq_len]: a prefill chunk or one decode token
    input_pos      int64 [1]         position of tokens[0, 0] in the sequence
    key_positions  int64 [L]         0, 1, ..., L-1 with L = input_pos + T: the cache slots attended
                                     (its length bounds the attention: only the filled part of the
                                     caches is read). Optional in eager use: then every slot is
                                     attended and the unfilled ones are masked out.
    logit_rows     int64 [R]         the positions of the chunk (0..T-1) whose logits are returned,
                                     R in [1, max_draft + 1]: [T-1] for a prefill or a decode step,
                                     0..T-1 to verify a speculative draft. Optional in eager use.
    logits     float [1, R, V]       with ``logit_rows``: the logits of those positions
               float [1, V]          without: the last position (``all_logits=False``)
               float [1, T, V]       without: every position (``all_logits=True``, for tests)

State lives in the program as mutable buffers, updated in place on every call:

    k_cache            [n_kv_heads, head_dim, max_seq_len + 1]  per attention layer, keys stored
                                                                 transposed (scores = q @ k_cache)
    v_cache            [n_kv_heads, max_seq_len + 1, head_dim]  both written at slots
                                                                 input_pos .. input_pos+T-1; the
                                                                 first L are read
    conv_state         [1, hidden, max_draft + conv_L_cache - 1]  per conv layer: the last inputs
                                                                 of the depthwise causal conv
    seq_end            int64 [1]                                 input_pos + T of the last call

A call with ``input_pos == 0`` starts a new sequence: the conv states are zeroed by arithmetic
(no control flow) and cache slots past the current position are masked out, so resetting for a
new prompt needs no reload and no extra method.

A call may also start up to ``max_draft`` positions *before* the end of the last one: that is how
a speculative draft is rolled back after the target model rejected its tail. The KV caches need
nothing for it (the rejected slots are overwritten and never attended), and each conv state keeps
the last ``max_draft + conv_L_cache - 1`` inputs, so the state as it was after any of the last
``max_draft`` tokens is a slice of it: the rewind ``seq_end - input_pos`` picks which.

Parameter names follow the Hugging Face checkpoint layout (``model.layers.N.conv.in_proj.weight``
...), so a state dict loads directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.model.config import LAYER_ATTENTION, Lfm2Config

# Most draft tokens one call can verify (and so roll back): the conv states keep this many extra
# inputs, and a program takes at most this + 1 logit rows. Measured on lfm2-350m 8da4w (x86, 2
# threads): a call of 2 to 8 tokens costs 1.2-1.3x a one-token step, one of 9 tokens 1.9x (XNNPACK's
# GEMM tiles are 8 rows high there), so 7 draft tokens ride along at almost no extra cost.
DEFAULT_MAX_DRAFT = 7


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension.

    The mean is taken over the last two dims of a 4-D view [1, N, dim, 1]: that is the form of
    mean XNNPACK delegates, so the norm stays inside the delegate instead of falling back to the
    portable kernels between two delegated blocks.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        sq = (x32 * x32).reshape(1, -1, self.dim, 1)
        ms = sq.mean(dim=(-2, -1), keepdim=True).reshape(*x.shape[:-1], 1)
        return self.weight * (x32 * torch.rsqrt(ms + self.eps)).to(x.dtype)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, ff_dim: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, ff_dim, bias=False)
        self.w3 = nn.Linear(hidden, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ShortConv(nn.Module):
    """Gated short convolution: (B, C, x) = in_proj(u); y = C * causal_conv(B * x); out_proj(y).

    The checkpoint's ``in_proj`` [3h, h] is held as three [h, h] projections (split on load), so
    no runtime split of a dynamic-length tensor is needed and each GEMM is delegated on its own.
    """

    def __init__(self, cfg: Lfm2Config, max_draft: int):
        super().__init__()
        h, L = cfg.hidden_size, cfg.conv_L_cache
        self.hidden = h
        self.L = L
        self.keep = max_draft + L - 1  # inputs kept: the state after any of the last max_draft tokens
        self.B_proj = nn.Linear(h, h, bias=cfg.conv_bias)
        self.C_proj = nn.Linear(h, h, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(h, h, bias=cfg.conv_bias)
        # Same parameter shape as the checkpoint's nn.Conv1d(h, h, L, groups=h): weight [h, 1, L].
        self.conv = nn.Conv1d(h, h, kernel_size=L, groups=h, bias=cfg.conv_bias, padding=0)
        self.out_proj = nn.Linear(h, h, bias=cfg.conv_bias)
        self.register_buffer("conv_state", torch.zeros(1, h, self.keep), persistent=False)
        self._register_load_state_dict_pre_hook(self._split_in_proj)

    @staticmethod
    def _split_in_proj(state_dict, prefix, *args, **kwargs) -> None:
        for suffix in ("weight", "bias"):
            key = f"{prefix}in_proj.{suffix}"
            if key in state_dict:
                b, c, x = state_dict.pop(key).chunk(3, dim=0)
                state_dict[f"{prefix}B_proj.{suffix}"] = b
                state_dict[f"{prefix}C_proj.{suffix}"] = c
                state_dict[f"{prefix}x_proj.{suffix}"] = x

    def forward(self, u: torch.Tensor, keep_state: torch.Tensor, state_cols: torch.Tensor | None) -> torch.Tensor:
        """``state_cols`` [L-1]: the columns of ``conv_state`` that are the state at input_pos; None
        for a model that never rewinds (the state is then the last L-1 inputs kept, a static slice)."""
        bx = (self.B_proj(u) * self.x_proj(u)).transpose(-1, -2)  # [1, h, T]
        kept = (self.conv_state[:, :, self.keep - self.L + 1:] if state_cols is None
                else self.conv_state.index_select(2, state_cols))
        state = kept * keep_state  # [1, h, L-1]
        window = torch.cat([state, bx], dim=-1)  # [1, h, L-1+T]
        # Keep the last `keep` inputs; zeros stand for inputs before the sequence when T is short
        # (a rewind never reaches them: it is at most the length of the call it undoes).
        padded = torch.cat([torch.zeros(1, self.hidden, self.keep - self.L + 1), window], dim=-1)
        self.conv_state.copy_(padded[:, :, -self.keep:])
        conv_out = self.conv(window).transpose(-1, -2)  # no padding: [1, T, h]
        return self.out_proj(self.C_proj(u) * conv_out)


class Attention(nn.Module):
    """Grouped-query attention with q/k RMSNorm, RoPE and a fixed-size KV cache."""

    def __init__(self, cfg: Lfm2Config, max_seq_len: int):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.n_rep = self.n_heads // self.n_kv
        self.scale = self.head_dim ** -0.5
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        self.q_layernorm = RMSNorm(self.head_dim, cfg.norm_eps)
        self.k_layernorm = RMSNorm(self.head_dim, cfg.norm_eps)
        half = self.head_dim // 2
        rot = torch.zeros(self.head_dim, self.head_dim)  # F.linear(x, rot) == cat(-x[half:], x[:half])
        rot[torch.arange(half), torch.arange(half) + half] = -1.0
        rot[torch.arange(half) + half, torch.arange(half)] = 1.0
        self.register_buffer("rotate_half", rot, persistent=False)
        # Keys are cached transposed, so a step multiplies by the cache as it lies in memory
        # (a transposed view would make XNNPACK copy the whole cache on every call). One spare
        # slot, never written or read, keeps "the first L slots" a proper slice for every L up
        # to max_seq_len (torch.export refuses a dynamic slice that may be the whole tensor).
        slots = max_seq_len + 1
        self.register_buffer("k_cache", torch.zeros(self.n_kv, self.head_dim, slots), persistent=False)
        self.register_buffer("v_cache", torch.zeros(self.n_kv, slots, self.head_dim), persistent=False)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) = cat(-x2, x1) as a product with a constant signed permutation: exact
        # (one non-zero term per output) and a GEMM XNNPACK delegates, where slicing a
        # dynamic-length tensor would fall back to the portable kernels.
        return x * cos + F.linear(x, self.rotate_half) * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, group_mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        """``group_mask`` [n_rep*T, L]: the causal mask over the first L cache slots, tiled once per
        query head of a KV group; only those L slots are read."""
        T, L = x.shape[1], group_mask.shape[-1]
        # RoPE in [1, T, heads, D] layout (cos, sin: [T, 1, D]), then heads-major for the cache.
        q = self._rope(self.q_layernorm(self.q_proj(x).view(1, T, self.n_heads, self.head_dim)), cos, sin)
        k = self._rope(self.k_layernorm(self.k_proj(x).view(1, T, self.n_kv, self.head_dim)), cos, sin)
        v = self.v_proj(x).view(1, T, self.n_kv, self.head_dim)
        # index_put_, which the ExecuTorch emitter re-inplaces (lower.to_program_bytes): the new rows
        # land in the buffer itself, with no copy of the cache per call. Called as the operator, not
        # as `cache[:, :, positions] = ...`: Python's index assignment strips the value's leading
        # size-1 dims, and with one KV head that rank-2 value fails the in-place kernel's check.
        index_put_ = torch.ops.aten.index_put_.default
        index_put_(self.k_cache, [None, None, positions], k.view(T, self.n_kv, self.head_dim).permute(1, 2, 0))
        index_put_(self.v_cache, [None, positions], v.view(T, self.n_kv, self.head_dim).transpose(0, 1))
        # The n_rep query heads sharing a KV head are stacked along the rows, so every KV head is
        # read from the cache as is (no repeat_interleave copy of the cache per step).
        qg = q.view(T, self.n_heads, self.head_dim).transpose(0, 1).contiguous()
        qg = qg.view(self.n_kv, self.n_rep * T, self.head_dim)
        scores = torch.bmm(qg, self.k_cache[:, :, :L]) * self.scale  # [n_kv, n_rep*T, L]
        probs = torch.softmax(scores + group_mask, dim=-1)
        out = torch.bmm(probs, self.v_cache[:, :L])  # [n_kv, n_rep*T, D]
        out = out.view(self.n_kv, self.n_rep, T, self.head_dim).permute(2, 0, 1, 3)
        out = out.reshape(1, T, self.n_heads * self.head_dim)
        return self.out_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Lfm2Config, kind: str, max_seq_len: int, max_draft: int):
        super().__init__()
        self.is_attention = kind == LAYER_ATTENTION
        if self.is_attention:
            self.self_attn = Attention(cfg, max_seq_len)
        else:
            self.conv = ShortConv(cfg, max_draft)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.ff_dim)
        self.operator_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                positions: torch.Tensor, keep_state: torch.Tensor, state_cols: torch.Tensor | None) -> torch.Tensor:
        if self.is_attention:
            h = self.self_attn(self.operator_norm(x), cos, sin, mask, positions)
        else:
            h = self.conv(self.operator_norm(x), keep_state, state_cols)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: Lfm2Config, max_seq_len: int, max_draft: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, kind, max_seq_len, max_draft) for kind in cfg.layer_types)
        self.embedding_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class Lfm2Model(nn.Module):
    """The whole decoder: ``forward(tokens [1,T], input_pos [1], key_positions [L], logit_rows [R])
    -> logits``."""

    def __init__(self, cfg: Lfm2Config, max_seq_len: int = 512, all_logits: bool = False,
                 max_draft: int | None = None):
        super().__init__()
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len={max_seq_len} must be at least 2")
        if max_draft is None:
            max_draft = min(DEFAULT_MAX_DRAFT, max_seq_len - 1)
        if not 1 <= max_draft < max_seq_len:
            raise ValueError(f"max_draft={max_draft} must be in [1, max_seq_len)")
        self.config = cfg
        self.max_seq_len = max_seq_len
        self.max_draft = max_draft
        self.n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
        self.all_logits = all_logits
        self.model = Backbone(cfg, max_seq_len, max_draft)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32)
                                             / cfg.head_dim))
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)  # [S, head_dim]
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self.register_buffer("seq_end", torch.zeros(1, dtype=torch.long), persistent=False)
        # False: every call continues where the last one ended or starts at 0 (no draft is ever
        # rejected), so the conv state needs no gather by position (Ethos-U55 has no gather).
        self.rewinds = True

    @property
    def is_tied(self) -> bool:
        return self.lm_head.weight is self.model.embed_tokens.weight

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor,
                key_positions: torch.Tensor | None = None, logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.shape[1]
        positions = input_pos + torch.arange(T, dtype=torch.long)  # [T]
        cos = self.rope_cos.index_select(0, positions).unsqueeze(1)  # [T, 1, head_dim]
        sin = self.rope_sin.index_select(0, positions).unsqueeze(1)
        if key_positions is None:  # eager: every slot, the unfilled ones masked out
            key_positions = torch.arange(self.max_seq_len, dtype=torch.long)
        allowed = key_positions.unsqueeze(0) <= positions.unsqueeze(1)  # [T, L]
        mask = torch.where(allowed, 0.0, float("-inf"))
        group_mask = mask.repeat(self.n_rep, 1)  # [n_rep*T, L], shared by all attention layers
        keep_state = (input_pos > 0).to(torch.float32)  # [1]: 0 starts a new sequence
        # A call that starts before the end of the last one rewinds the conv states (a rejected
        # draft): the state at input_pos is `rewind` inputs before the last ones kept.
        state_cols = None
        if self.rewinds:
            rewind = torch.clamp(self.seq_end - input_pos, 0, self.max_draft)  # [1]
            state_cols = (self.max_draft - rewind) + torch.arange(self.config.conv_L_cache - 1, dtype=torch.long)
        self.seq_end.copy_(input_pos + T)
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, cos, sin, group_mask, positions, keep_state, state_cols)
        if logit_rows is not None:
            x = x.index_select(1, logit_rows)  # [1, R, hidden]: the head runs on those rows only
        elif not self.all_logits:
            x = x[:, -1, :]
        return self.lm_head(self.model.embedding_norm(x))

    @torch.no_grad()
    def reset(self) -> None:
        """Fresh zero state (eager use; the exported program resets at input_pos == 0).

        The buffers are replaced rather than zeroed in place, so a graph still holding the old
        ones (training accumulates several sequences before backward) stays valid.
        """
        for module in self.modules():
            for name in ("k_cache", "v_cache", "conv_state", "seq_end"):
                if name in module._buffers:
                    module._buffers[name] = torch.zeros_like(module._buffers[name])


def build_model(cfg: Lfm2Config, max_seq_len: int = 512, all_logits: bool = False,
                seed: int | None = None, init_std: float = 0.02) -> Lfm2Model:
    """A model with random weights (normal(0, init_std), norms at 1), seeded for reproducibility."""
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    model = Lfm2Model(cfg, max_seq_len=max_seq_len, all_logits=all_logits)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * init_std)
    return model.eval()
