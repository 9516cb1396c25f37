"""The DeLo training step written the way a PyTorch user would write it for speed: the step
`delo bench train --torch` (benches/torch_train.py) times the engine against.

Same math as docs/method.md and as scripts/fixtures/delo_reference.py, the golden reference
the engine is tested against, which is written to be read equation by equation (one pair of
einsums per expert pool, a hand-written softmax attention, AdamW with foreach=False). This one is
written to be fast, as a competent user would:
  * the frozen trunk is Hugging Face's ViltModel modules (embeddings, each ViltLayer's LayerNorms,
    linears and GELU, the final LayerNorm and the pooler), attention through
    F.scaled_dot_product_attention, the frozen q, k, v projections of a layer fused into one GEMM;
  * the six expert pools of a layer (targets q, k, v x modalities v, t) are stacked nn.Parameters
    routed together: one einsum per router, torch.topk, one advanced index per factor side;
  * the update Delta W x of the six pools is one bmm on the A side and one batched einsum on the
    B side, the straight-through gates and alpha folded into the gathered B factors: no Python
    loop over samples, pools or targets;
  * the indices of the complete samples (for L_align and the L_con proxy forward) come from the
    host copy of the missing types, so the step never waits on the device;
  * torch.optim.AdamW in its default implementation (foreach on CUDA).
benches/check_torch_step.py checks it against the golden reference (losses, gradients and five
AdamW steps on the tiny fixture); its result is recorded in benches/results/.

Scope: variant `delo`, gate `st`, targets q, k, v (the bench's and the fixture's), any E, r, rho,
con-proxy `text` or `image`, cross-modal guidance on or off. torch.topk breaks exact ties in
routing scores in its own order, where the golden reference takes the lower index; random scores
do not tie.
"""

import torch
import torch.nn.functional as F
from torch import nn

from delo_reference import COMPLETE, IMAGE_MISSING, TEXT_MISSING, DeloConfig  # noqa: F401
from patch_order import deterministic_patches

TARGETS = ("q", "k", "v")
MODALITIES = ("v", "t")
# Stacking order of a layer's pools: target-major, so that a target's two pools are adjacent.
POOLS = [(t, mu) for t in TARGETS for mu in MODALITIES]
# The golden reference's tensor name suffix -> the stacked parameter holding it.
FLAT_SUFFIX = {
    "a_pool": "a_pool",
    "b_pool": "b_pool",
    "router_a.weight": "router_a_weight",
    "router_a.bias": "router_a_bias",
    "router_b.weight": "router_b_weight",
    "router_b.bias": "router_b_bias",
    "compat": "compat",
}


class LayerExperts(nn.Module):
    """The DeLo experts of one layer's q, k, v (docs/method.md#composition; paper eq. 2-5): six
    pools stacked.

    a_pool [P, E, rho, d], b_pool [P, E, d, rho], router_{a,b}_weight [P, E, d], router_{a,b}_bias
    [P, E], compat [P, r, d, E], with P = 6 in POOLS order."""

    def __init__(self, d, cfg):
        super().__init__()
        p, e, r, rho = len(POOLS), cfg.E, cfg.r, cfg.rho
        self.cfg = cfg
        self.a_pool = nn.Parameter(torch.empty(p, e, rho, d))
        self.b_pool = nn.Parameter(torch.empty(p, e, d, rho))
        self.router_a_weight = nn.Parameter(torch.empty(p, e, d))
        self.router_a_bias = nn.Parameter(torch.empty(p, e))
        self.router_b_weight = nn.Parameter(torch.empty(p, e, d))
        self.router_b_bias = nn.Parameter(torch.empty(p, e))
        self.compat = nn.Parameter(torch.empty(p, r, d, e))
        self.register_buffer("pool_index", torch.arange(p)[:, None], persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The initialisation of docs/method.md#parameters: B pools zero, A pools and W_C
        N(0, 1/d_in), routers as nn.Linear's default (uniform +-1/sqrt(d_in))."""
        d = self.a_pool.shape[-1]
        self.b_pool.zero_()
        self.a_pool.normal_(0.0, d**-0.5)
        self.compat.normal_(0.0, d**-0.5)
        for w in (self.router_a_weight, self.router_a_bias, self.router_b_weight, self.router_b_bias):
            w.uniform_(-(d**-0.5), d**-0.5)

    def forward(self, xn, qh_v, qh_t):
        """xn: LN_before(X_l) [B, N, d]; qh_v, qh_t: guided queries [B, d].
        Returns the q, k, v updates side by side, [B, N, 3d]."""
        cfg = self.cfg
        b, n, d = xn.shape
        q = torch.stack((qh_v, qh_t), 1).repeat(1, len(TARGETS), 1)  # [B, P, d], POOLS order
        # Eq. (3): A routing.
        p_a = torch.softmax(torch.einsum("bpd,ped->bpe", q, self.router_a_weight) + self.router_a_bias, -1)
        s_a = p_a.topk(cfg.r, -1).indices  # [B, P, r]
        a_sel = self.a_pool[self.pool_index, s_a]  # [B, P, r, rho, d]
        # B routing: its own scores plus the compatibility with the selected A factors.
        c_logits = torch.einsum("bpid,pide->bpie", a_sel.detach().sum(3), self.compat)
        p_b = (torch.softmax(torch.einsum("bpd,ped->bpe", q, self.router_b_weight) + self.router_b_bias, -1)
               + cfg.lambda_cfs * torch.softmax(c_logits, -1).sum(2))
        s_b = p_b.topk(cfg.r, -1).indices
        b_sel = self.b_pool[self.pool_index, s_b]  # [B, P, r, d, rho]
        # Straight-through gates (forward value 1), with alpha, folded into the B factors.
        pa, pb = p_a.gather(-1, s_a), p_b.gather(-1, s_b)
        g = cfg.alpha * (1.0 + (pa - pa.detach())) * (1.0 + (pb - pb.detach()))  # [B, P, r]
        k = len(MODALITIES) * cfg.r * cfg.rho  # rank of one target's update, both pools
        h = torch.bmm(xn, a_sel.reshape(b, -1, d).transpose(1, 2))  # [B, N, P r rho]
        bg = (b_sel * g[..., None, None]).transpose(-1, -2).reshape(b, len(TARGETS), k, d)
        delta = torch.einsum("bntk,btkd->bntd", h.view(b, n, len(TARGETS), k), bg)
        return delta.reshape(b, n, len(TARGETS) * d)


class DeloVilt(nn.Module):
    """Frozen HF ViltModel + DeLo experts on q, k, v of every layer + a linear task head."""

    def __init__(self, vilt, cfg):
        super().__init__()
        assert tuple(cfg.targets) == TARGETS and cfg.con_proxy in ("text", "image"), cfg
        vc = vilt.config
        self.cfg = cfg
        self.vilt = vilt.eval().requires_grad_(False)
        self.heads = vc.num_attention_heads
        self.experts = nn.ModuleList(LayerExperts(vc.hidden_size, cfg) for _ in range(vc.num_hidden_layers))
        self.head = nn.Linear(vc.hidden_size, cfg.n_classes)
        for i, layer in enumerate(vilt.encoder.layer):
            att = layer.attention.attention
            self.register_buffer(f"qkv_weight{i}", torch.cat([att.query.weight, att.key.weight, att.value.weight]))
            self.register_buffer(f"qkv_bias{i}", torch.cat([att.query.bias, att.key.bias, att.value.bias]))

    def embed(self, inputs):
        """Frozen embeddings X_0 [B, N, d] and key mask [B, N] (patches in the engine's order)."""
        with deterministic_patches(), torch.no_grad():
            x0, mask = self.vilt.embeddings(
                inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                inputs["pixel_values"], inputs["pixel_mask"], None, None, image_token_type_idx=1)
        return x0, mask

    def block(self, i, x, attn_mask, qh_v, qh_t):
        """One pre-LN ViLT block with the adapted q, k, v (docs/vilt.md#encoder-blocks)."""
        layer = self.vilt.encoder.layer[i]
        b, n, d = x.shape
        xn = layer.layernorm_before(x)
        qkv = F.linear(xn, getattr(self, f"qkv_weight{i}"), getattr(self, f"qkv_bias{i}"))
        qkv = qkv + self.experts[i](xn, qh_v, qh_t)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = x + layer.attention.output(ctx.transpose(1, 2).reshape(b, n, d), x)
        return layer.output(layer.intermediate(layer.layernorm_after(h)), h)

    def forward(self, x0, mask, text_len, missing, proxy=None):
        """Logits [B, n] and the unguided queries q_v, q_t [B, d] at the input of the last layer.
        proxy "text" / "image": the L_con forward (text routers take q_v / image routers q_t)."""
        n = x0.shape[1]
        m = mask.to(x0.dtype)
        is_text = (torch.arange(n, device=x0.device) < text_len).to(x0.dtype)
        # Masked means over image (positions >= T) and text tokens as one bmm: [B, 2, N].
        w = torch.stack((m * (1 - is_text), m * is_text), 1)
        w = w / w.sum(-1, keepdim=True)
        attn_mask = mask.bool()[:, None, None, :]
        text_missing = (missing == TEXT_MISSING)[:, None]
        image_missing = (missing == IMAGE_MISSING)[:, None]
        x = x0
        for i in range(len(self.experts)):
            q_v, q_t = torch.bmm(w, x).unbind(1)
            qh_v, qh_t = q_v, q_t
            if self.cfg.cross_modal_guide:  # eq. (5)
                qh_t = torch.where(text_missing, q_v, q_t)
                qh_v = torch.where(image_missing, q_t, q_v)
            if proxy == "text":
                qh_t = q_v
            elif proxy == "image":
                qh_v = q_t
            x = self.block(i, x, attn_mask, qh_v, qh_t)
        return self.head(self.vilt.pooler(self.vilt.layernorm(x))), q_v, q_t

    def flat(self, of=lambda p: p):
        """{golden-reference name: of(parameter) slice}, e.g. of=lambda p: p.grad for gradients."""
        out = {}
        for i, ex in enumerate(self.experts):
            for j, (t, mu) in enumerate(POOLS):
                for suffix, attr in FLAT_SUFFIX.items():
                    out[f"layer{i}.{t}.{mu}.{suffix}"] = of(getattr(ex, attr))[j]
        out["head.weight"] = of(self.head.weight)
        out["head.bias"] = of(self.head.bias)
        return out

    @torch.no_grad()
    def load_flat(self, params):
        """Copies the golden reference's flat parameter dict into the stacked parameters."""
        for name, dst in self.flat().items():
            dst.copy_(params[name])


def step_loss(model, forward, x0, mask, text_len, missing, labels, complete_idx):
    """Eq. (9)-(10): L = L_c + lambda_align L_align + lambda_con L_con; main forward on the batch,
    proxy forward on its complete rows `complete_idx` (a device tensor built from host data).
    `forward` is `model` or its torch.compile. Returns (L, L_c, L_align, L_con)."""
    cfg = model.cfg
    logits, q_v, q_t = forward(x0, mask, text_len, missing)
    l_c = F.cross_entropy(logits, labels)
    if complete_idx.numel() == 0:
        zero = logits.new_zeros(())
        return l_c, l_c, zero, zero
    l_align = (1.0 - F.cosine_similarity(q_v[complete_idx], q_t[complete_idx], dim=-1)).mean()
    proxy_logits, _, _ = forward(x0[complete_idx], mask[complete_idx], text_len,
                                 missing[complete_idx], proxy=cfg.con_proxy)
    l_con = F.kl_div(F.log_softmax(proxy_logits, -1), F.softmax(logits[complete_idx], -1).detach(),
                     reduction="batchmean")
    return l_c + cfg.lambda_align * l_align + cfg.lambda_con * l_con, l_c, l_align, l_con


def make_optimizer(model, lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01):
    """AdamW over the trainable tensors (one group, biases included), torch's default kernel."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                             betas=betas, eps=eps, weight_decay=weight_decay)


def train_step(model, forward, opt, inputs, missing, labels, device):
    """One optimiser step from host inputs (copied to `device` inside the step, as the engine's
    host batches are); bf16 autocast on CUDA. Returns the four loss terms (device tensors)."""
    complete_idx = (missing == COMPLETE).nonzero().squeeze(1).to(device, non_blocking=True)
    inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    missing, labels = missing.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        x0, mask = model.embed(inputs)
        losses = step_loss(model, forward, x0, mask, inputs["input_ids"].shape[1], missing, labels,
                           complete_idx)
    losses[0].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return losses
