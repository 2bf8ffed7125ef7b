"""The fused ConvNet block: conv3x3 -> instance norm -> ReLU -> 2x2 avg-pool as one op, with its derivatives.

The same maths as PyTorch's layers one by one (`podd_lib.models`), for speed and memory on the CPU.
Instance norm is group norm with one channel per group (mean / biased variance over H, W, eps
1e-5, per-channel affine). Outside torch.func transforms a ConvNet block with instance norm and
average pooling runs as one autograd Function, `_ConvBlockFn`, with a hand-written backward and
double backward (RaT-BPTT differentiates through the inner steps' gradients). Checked by
gradgradcheck and against autograd in tests/unit/test_models.py; it keeps less than half the memory
per unrolled step (see benchmarks/README.md) and makes fewer activation-sized temporaries. On the
CPU, in float32 channels-last, its elementwise work (norm, ReLU, pool and their derivatives) runs in
compiled kernels (`podd_lib.fast.kernels`) where they build; elsewhere in PyTorch ops. Under vmap
(the evaluation on a GPU) the plain layers run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

def _stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per (image, channel) mean and 1 / sqrt(biased variance + eps), each (N, C)."""
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return mean, torch.rsqrt(var + eps)


def _avg_prod(p: Tensor, q: Tensor, out: Tensor | None = None) -> Tensor:
    """mean over (H, W) of p * q, (N, C); works in any memory layout. `out`: scratch space for p * q."""
    return torch.mul(p, q, out=out).mean((2, 3)) if out is not None else (p * q).mean((2, 3))


def _bc(t: Tensor) -> Tensor:
    """(N or 1, C) -> (N or 1, C, 1, 1) for broadcasting over H, W."""
    return t[:, :, None, None]


class _InstanceNormFn(torch.autograd.Function):
    """Instance norm with a hand-written backward and double backward.

    RaT-BPTT differentiates through the inner training step, so the norm's backward is itself
    differentiated. PyTorch's generic derivative of group norm's backward costs about as much as
    the rest of the network's double backward. Here every pass is a per-(image, channel) scalar
    times an activation-sized tensor (formulas in `_InstanceNormGrad`), in whatever memory layout
    the input has (channels-last included). Checked by gradgradcheck and against F.group_norm's
    first and second derivatives in tests/unit/test_models.py.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, rstd = _fused_norm(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the backward will be differentiated
            gx, gw, gb = _InstanceNormGrad.apply(gy, x, weight, mean, rstd)
        else:
            gx, gw, gb = _norm_backward(gy, x, weight, mean, rstd)
        return gx, gw, gb, None


def _norm_backward(gy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First-order instance-norm gradients (gx, gw, gb); PyTorch's fused kernel for NCHW tensors."""
    n, c, h, w = x.shape
    if x.is_contiguous() and gy.is_contiguous():
        return torch.ops.aten.native_group_norm_backward(gy, x, mean, rstd, weight, n, c, h * w, c,
                                                         [True, True, True])
    r, mu, gam = rstd, mean, weight[None, :]
    s_gy = gy.mean((2, 3))
    m_gyx = r * (_avg_prod(gy, x) - mu * s_gy)  # mean(gy x_hat)
    k_x = -gam * r * r * m_gyx  # gx = gam r gy + k_x x + k_0
    k_0 = -gam * r * s_gy - k_x * mu
    gx = torch.addcmul(_bc(k_0), x, _bc(k_x))
    gx.addcmul_(_bc(gam * r), gy)
    return gx, (h * w * m_gyx).sum(0), (h * w * s_gy).sum(0)


class _InstanceNormGrad(torch.autograd.Function):
    """(gy, x, weight) -> (gx, gw, gb) of instance norm, and its derivative written out.

    With x_hat = (x - mu) r, r = (var + eps)^-1/2 per image and channel, g = weight * gy, M = H W,
    P(t) = t - mean(t) - x_hat mean(t x_hat) (means over H, W):
        gx = r P(g),  gw = sum gy x_hat,  gb = sum gy.
    For upstream grads (u, a, b) of (gx, gw, gb):
        d gy = weight r P(u) + a x_hat + b
        d w  = sum gy r P(u)
        d x  = r P(G) - x_hat r^2 / M * sum_HW u (g - mean(g) - x_hat c)
    with c = mean(g x_hat), G = -r (c u + mean(u x_hat) g) + a gy. All means reduce to the
    per-(image, channel) scalars mean(gy), mean(gy x), mean(u), mean(u x), mean(u gy), so each
    output is one chain of multiply-adds of u, gy and x (x_hat = r x - r mu is never stored).
    """

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor):
        ctx.save_for_backward(gy, x, weight, mean, rstd)
        ctx.set_materialize_grads(False)
        return _norm_backward(gy, x, weight, mean, rstd)

    @staticmethod
    def backward(ctx, u: Tensor | None, a: Tensor | None, b: Tensor | None):
        gy, x, weight, mean, rstd = ctx.saved_tensors
        d_gy, d_x, d_w = _norm_double_backward(u, a, b, gy, x, weight, mean, rstd)
        return d_gy, d_x, d_w, None, None


def _norm_double_backward(u: Tensor | None, a: Tensor | None, b: Tensor | None, gy: Tensor, x: Tensor,
                          weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(d gy, d x, d weight) of instance norm's backward for upstream (u, a, b); formulas in `_InstanceNormGrad`."""
    c = x.shape[1]
    m = x.shape[2] * x.shape[3]
    r, mu, gam = rstd, mean, weight[None, :]
    zero = x.new_zeros(1, c)
    a_ = zero if a is None else a[None, :]
    b_ = zero if b is None else b[None, :]
    s_gy = gy.mean((2, 3))
    m_gyx = r * (_avg_prod(gy, x) - mu * s_gy)  # mean(gy x_hat)
    if u is not None:
        m_u = u.mean((2, 3))
        scratch = torch.empty_like(u)  # one activation-sized buffer for both products
        m_ux = r * (_avg_prod(u, x, scratch) - mu * m_u)  # mean(u x_hat)
        m_uy = _avg_prod(u, gy, scratch)  # mean(u gy)
        del scratch
    else:
        m_u = m_ux = m_uy = torch.zeros_like(s_gy)
    # d gy = weight r P(u) + a x_hat + b = k_u u + k_x x_hat + k_0
    k_x = a_ - gam * r * m_ux
    k_0 = b_ - gam * r * m_u
    d_gy = torch.addcmul(_bc(k_0 - k_x * r * mu), x, _bc(k_x * r))
    if u is not None:
        d_gy.addcmul_(_bc(gam * r), u)
    d_w = (r * m * (m_uy - m_u * s_gy - m_ux * m_gyx)).sum(0) if u is not None else None
    # d x = r P(G) - x_hat r^2 / M g_r, with G = al1 u + al2 gy
    g_r = gam * m * (m_uy - s_gy * m_u - m_gyx * m_ux)
    al1 = -r * gam * m_gyx
    al2 = a_ - r * gam * m_ux
    c_x = -r * (al1 * m_ux + al2 * m_gyx) - g_r * r * r / m  # coefficient of x_hat
    c_0 = -r * (al1 * m_u + al2 * s_gy)
    d_x = torch.addcmul(_bc(c_0 - c_x * r * mu), x, _bc(c_x * r))
    d_x.addcmul_(_bc(r * al2), gy)
    if u is not None:
        d_x.addcmul_(_bc(r * al1), u)
    return d_gy, d_x, d_w


def _native_norm_ok(x: Tensor) -> bool:
    """Whether PyTorch's fused group-norm kernel takes x: NCHW anywhere, channels-last on the CPU only.

    Off the CPU, `native_group_norm` requires NCHW-contiguous input (a TORCH_CHECK in ATen's
    group_norm.cpp), so channels-last CUDA activations take the `_stats` path instead.
    """
    return x.is_contiguous() or (x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last))


def _fused_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Instance norm forward (y, mean, rstd), PyTorch's fused kernel where the layout allows."""
    n, c, h, w = x.shape
    if _native_norm_ok(x):
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
        return y, mean.view(n, c), rstd.view(n, c)
    mean, rstd = _stats(x, eps)
    scale = weight[None, :] * rstd
    return torch.addcmul(_bc(bias[None, :] - mean * scale), x, _bc(scale)), mean, rstd


# ----------------------------------------------------------------------------- norm -> ReLU -> 2x2 avg-pool


def _layout(t: Tensor) -> torch.memory_format:
    """NCHW when t is contiguous, else channels-last: the two layouts the fused ops work in."""
    return torch.contiguous_format if t.is_contiguous() else torch.channels_last


def _cells(t: Tensor, k: int) -> Tensor:
    """A 6-D view of t that splits H and W into 2x2 cells (k=2) or adds unit cell axes (k=1, pooled maps)."""
    n, c, h, w = t.shape
    if t.is_contiguous():
        return t.view(n, c, h // k, k, w // k, k) if k == 2 else t.view(n, c, h, 1, w, 1)
    t = t.permute(0, 2, 3, 1)  # channels-last memory is (N, H, W, C)
    return t.view(n, h // k, k, w // k, k, c) if k == 2 else t.view(n, h, 1, w, 1, c)


def _relu_mask(z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """1.0 where the normalised z is positive (ReLU passes), else 0.0; recomputed from z and its statistics."""
    scale = weight[None, :] * rstd
    mask = torch.empty(z.shape, dtype=z.dtype, device=z.device, memory_format=_layout(z))
    torch.addcmul(_bc(bias[None, :] - mean * scale), z, _bc(scale), out=mask)
    return mask.gt_(0)


def _unpool_masked_(mask: Tensor, gp: Tensor) -> Tensor:
    """mask * (gp spread over its 2x2 cell / 4), written into mask: the backward of pool(relu(.))."""
    _cells(mask, 2).mul_(_cells((gp * 0.25).contiguous(memory_format=_layout(mask)), 1))
    return mask


# ----------------------------------------------------------------------------- a whole ConvNet block as one op


def _in(t: Tensor | None, cdt: torch.dtype | None) -> Tensor | None:
    """t in the convolutions' dtype (None: unchanged)."""
    return t if cdt is None or t is None else t.to(cdt)


def _out(t: Tensor | None, like: Tensor) -> Tensor | None:
    """A convolution result back in the network's dtype."""
    return t if t is None or t.dtype == like.dtype else t.to(like.dtype)


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, cdt: torch.dtype | None) -> Tensor:
    """conv3x3(x, W, bias, padding 1), computed in dtype cdt when given."""
    return _out(F.conv2d(_in(x, cdt), _in(weight, cdt), _in(bias, cdt), padding=1), weight)


def _conv_grads(gz: Tensor, x: Tensor, weight: Tensor, need_x: bool, cdt: torch.dtype | None = None,
                need_w: bool = True, bias: bool = True) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(gx, gW, g_bias) of z = conv3x3(x, W, bias, padding 1) for the output gradient gz."""
    outs = torch.ops.aten.convolution_backward(_in(gz, cdt), _in(x, cdt), _in(weight, cdt),
                                               [weight.shape[0]] if bias else None, [1, 1], [1, 1], [1, 1], False,
                                               [0, 0], 1, [need_x, need_w, bias])
    return tuple(_out(t, weight) for t in outs)


def _z_grad(gp: Tensor, z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, rstd: Tensor
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(gz, g_gamma, g_beta): from the pooled output's gradient back through pool, ReLU and the norm."""
    gy = _unpool_masked_(_relu_mask(z, gamma, beta, mean, rstd), gp)  # ReLU and pool: M U(gp)
    return _norm_backward(gy, z, gamma, mean, rstd)


def _grad_used(ctx, i: int) -> bool:
    """Whether the running backward uses the gradient of input i of a custom Function (True when unsure).

    `ctx.needs_input_grad` only says whether the input requires grad. In RaT-BPTT's unrolled steps
    the first block's input (the patches) does, but the inner gradient is taken for the weights
    only, so PyTorch's engine will not run the node that the input gradient goes to; skipping it
    saves the first conv's input gradient in every unrolled step.
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    if node is None or type(node).__name__ == "AccumulateGrad":  # a leaf: the engine cannot tell under grad()
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # a PyTorch without this query
        return True


class _ConvBlockFn(torch.autograd.Function):
    """avg_pool2x2(relu(instance_norm(conv3x3(x)))): one ConvNet block as one op (same maths).

    Returns the block's output p and its conv output z (callers use p; z is returned so that the
    double backward can send its z-gradient here, to be summed with p's before one pass back
    through the conv). Saved for the backward: the input x, z and z's per-(image, channel)
    statistics; the ReLU mask is recomputed from z. When the backward is itself differentiated
    (RaT-BPTT's unrolled steps), `_ConvBlockGrad` recomputes the conv output gradient gz from the
    small pooled gradient instead of keeping it, which is what autograd's conv double backward
    would store: a full activation per block and step.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, eps: float,
                cdt: torch.dtype | None = None, kern=None):
        z = _conv(x, weight, bias, cdt)
        ctx.kern = kern if kern is not None and kernels.applies(z) else None
        if ctx.kern is not None:
            p, mean, rstd = kernels.block_forward(ctx.kern, z, gamma, beta, eps)
        else:
            y, mean, rstd = _fused_norm(z, gamma, beta, eps)
            p = F.avg_pool2d(y.relu_(), 2)
        ctx.save_for_backward(x, weight, z, gamma, beta, mean, rstd)
        ctx.cdt = cdt
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a tensor of zeros
        return p, z

    @staticmethod
    def backward(ctx, gp: Tensor | None, gz_extra: Tensor | None):
        x, weight, z, gamma, beta, mean, rstd = ctx.saved_tensors
        need_x = _grad_used(ctx, 0)
        gx = g_gamma = g_beta = None
        cdt = ctx.cdt
        if gp is None and gz_extra is None:
            return None, None, None, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: the backward will be differentiated
            gw = gb = 0
            if gp is not None:
                gx, gw, gb, g_gamma, g_beta = _ConvBlockGrad.apply(gp, x, weight, z, gamma, beta, mean, rstd, need_x,
                                                                   cdt, ctx.kern)
            if gz_extra is not None:  # third order (gradgradcheck): plain autograd ops
                ex, ew, eb = _conv_grads(gz_extra, x, weight, need_x, cdt)
                gx = ex if gx is None or not need_x else gx + ex
                gw, gb = gw + ew, gb + eb
        else:
            gz = gz_extra
            if gp is not None and ctx.kern is not None:
                gz, g_gamma, g_beta = kernels.block_zgrad(ctx.kern, gp, z, gamma, beta, mean, rstd, gz_extra,
                                                          scratch=True)
            elif gp is not None:
                gz, g_gamma, g_beta = _z_grad(gp, z, gamma, beta, mean, rstd)
                if gz_extra is not None:
                    gz.add_(gz_extra)
            gx, gw, gb = _conv_grads(gz, x, weight, need_x, cdt)
        return (gx if need_x else None), gw, gb, g_gamma, g_beta, None, None, None


class _ConvBlockGrad(torch.autograd.Function):
    """(gp, x, W, z, gamma) -> (gx, gW, g_bias, g_gamma, g_beta) of `_ConvBlockFn`, and its derivative.

    With gz the conv output gradient (from gp, see `_z_grad`), gx = conv^T(gz; W),
    gW = corr(x, gz), g_bias = sum gz. For upstream (u_x, u_W, u_b, a, b):
        d gz = conv(u_x; W) + conv(x; u_W) + u_b,   d W = corr(u_x, gz),   d x = conv^T(gz; u_W);
    d gz, a and b then pass through instance norm's double backward to (d gy, d z, d gamma), and
    d gp = U^T(M d gy) = avg_pool2x2(M d gy), with M the ReLU mask and U the 2x2 spread / 4
    (gy = M U(gp); M is piecewise constant in z, so, as for ReLU in autograd, it has no derivative).
    d z goes to `_ConvBlockFn`'s z output, which takes it back through the conv together with the
    gradient of the block's output.
    """

    @staticmethod
    def forward(ctx, gp, x, weight, z, gamma, beta, mean, rstd, need_x: bool, cdt: torch.dtype | None = None,
                kern=None):
        ctx.save_for_backward(gp, x, weight, z, gamma, beta, mean, rstd)
        ctx.need_x, ctx.cdt, ctx.kern = need_x, cdt, kern
        ctx.set_materialize_grads(False)
        if kern is not None:
            gz, g_gamma, g_beta = kernels.block_zgrad(kern, gp, z, gamma, beta, mean, rstd, scratch=True)
        else:
            gz, g_gamma, g_beta = _z_grad(gp, z, gamma, beta, mean, rstd)
        gx, gw, gb = _conv_grads(gz, x, weight, need_x, cdt)
        return (gx if need_x else x.new_zeros(())), gw, gb, g_gamma, g_beta

    @staticmethod
    def backward(ctx, u_x, u_w, u_b, a, b):
        if ctx.kern is not None and not torch.is_grad_enabled():
            return _ConvBlockGrad._backward_fused(ctx, u_x, u_w, u_b, a, b)
        gp, x, weight, z, gamma, beta, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad  # gp, x, weight, z, gamma, beta, mean, rstd, need_x
        mask = _relu_mask(z, gamma, beta, mean, rstd)
        gy = _unpool_masked_(mask.clone(), gp)
        gz = _norm_backward(gy, z, gamma, mean, rstd)[0]
        if not ctx.need_x:
            u_x = None
        # the conv part: d gz, and the terms of W and x that hold gz
        cdt = ctx.cdt
        d_gz = _conv(x, torch.zeros_like(weight) if u_w is None else u_w, u_b, cdt)
        if u_x is not None:
            d_gz = d_gz + _conv(u_x, weight, None, cdt)
        d_w = _conv_grads(gz, u_x, weight, False, cdt, bias=False)[1] if u_x is not None else None
        d_x = None
        if need[1] and u_w is not None:
            d_x = _conv_grads(gz, x, u_w, True, cdt, need_w=False, bias=False)[0]
        del gz
        # the norm / ReLU / pool part
        d_gy, d_z, d_gamma = _norm_double_backward(d_gz, a, b, gy, z, gamma, mean, rstd)
        d_gp = F.avg_pool2d(d_gy.mul_(mask), 2)
        return d_gp, d_x, d_w, d_z, d_gamma, None, None, None, None, None, None

    @staticmethod
    def _backward_fused(ctx, u_x, u_w, u_b, a, b):
        """`backward` with the elementwise part in one kernel (`kernels.block_double`); same formulas."""
        gp, x, weight, z, gamma, beta, mean, rstd = ctx.saved_tensors
        need, cdt = ctx.needs_input_grad, ctx.cdt
        if not ctx.need_x:
            u_x = None
        d_gz = None  # conv(u_x; W) + conv(x; u_W) + u_b
        if u_w is not None or u_b is not None:
            d_gz = _conv(x, torch.zeros_like(weight) if u_w is None else u_w, u_b, cdt)
        if u_x is not None:
            d_gz = _conv(u_x, weight, None, cdt) if d_gz is None else d_gz.add_(_conv(u_x, weight, None, cdt))
        want_x = need[1] and u_w is not None
        gz, d_gp, d_z, d_gamma = kernels.block_double(ctx.kern, gp, z, gamma, beta, mean, rstd, d_gz, a, b,
                                                      want_gz=u_x is not None or want_x, scratch=True)
        d_w = _conv_grads(gz, u_x, weight, False, cdt, bias=False)[1] if u_x is not None else None
        d_x = _conv_grads(gz, x, u_w, True, cdt, need_w=False, bias=False)[0] if want_x else None
        return d_gp, d_x, d_w, d_z, d_gamma, None, None, None, None, None, None


def _under_functorch(x: Tensor) -> bool:
    """True inside torch.func transforms (vmap, grad), where custom autograd Functions are avoided."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def norm_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether the hand-written instance norm takes x: a 4-D batch outside torch.func transforms."""
    return x.dim() == 4 and not _under_functorch(x) and not _under_functorch(weight)


def instance_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Instance norm with the hand-written backward and double backward (`_InstanceNormFn`)."""
    return _InstanceNormFn.apply(x, weight, bias, eps)


def block_applies(x: Tensor, conv: nn.Conv2d, norm_weight: Tensor) -> bool:
    """Whether `fused_block` takes this block's input: a 4-D batch, even H and W, a conv bias, no torch.func."""
    return (conv.bias is not None and x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0
            and not any(_under_functorch(t) for t in (x, conv.weight, norm_weight)))


def fused_block(x: Tensor, conv: nn.Conv2d, norm_weight: Tensor, norm_bias: Tensor, eps: float,
                conv_dtype: torch.dtype | None = None, cpu_kernels: bool = True) -> Tensor:
    """avg_pool2x2(relu(instance_norm(conv(x)))) as one op; compiled elementwise kernels on the CPU if asked."""
    kern = kernels.load() if cpu_kernels and x.device.type == "cpu" else None
    return _ConvBlockFn.apply(x, conv.weight, conv.bias, norm_weight, norm_bias, eps, conv_dtype, kern)[0]
